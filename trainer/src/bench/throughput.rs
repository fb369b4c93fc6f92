//! `pneumoscope bench`: inference and training throughput of the Burn CPU backend and, in the
//! same run on the same shapes, of PyTorch; plus the frozen protocol's wall time against
//! recomputing the backbone features every epoch.

use crate::machinery::device::DeviceName;
use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::Distribution;
use pneumoscope::arch;
use pneumoscope::arch::Operations;
use pneumoscope::model::{Classifier, Head};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The PyTorch reference script (shipped with the trainer, run in the test-only venv).
const TORCH_SCRIPT: &str = include_str!("../../python/bench_torch.py");

/// Options of `bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchOptions {
    /// Architecture.
    #[arg(long, default_value = "efficientnet_lite0")]
    pub arch: String,
    /// Batch size.
    #[arg(long = "batch-size", default_value_t = 16)]
    pub batch: usize,
    /// Timed iterations (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Python with torch and timm for the reference run (default: the test venv,
    /// `$HOME/.cache/pneumoscope/venv/bin/python`, when it exists).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Skip the PyTorch reference.
    #[arg(long)]
    pub no_reference: bool,
    /// Images (train + val) in the frozen-protocol estimate.
    #[arg(long, default_value_t = 3849)]
    pub images: usize,
    /// Epochs in the frozen-protocol estimate.
    #[arg(long, default_value_t = 40)]
    pub epochs: usize,
    /// Burn device: cpu, vulkan or cuda (the latter two in builds with those features); for
    /// a GPU device the PyTorch reference runs on CUDA when it can.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceName,
}

impl BenchOptions {
    /// The Python of the reference run: `--python`, else the test venv's; `None` with
    /// `--no-reference`.
    pub fn reference_python(&self) -> Result<Option<PathBuf>> {
        if self.no_reference {
            return Ok(None);
        }
        let default = std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".cache/pneumoscope/venv/bin/python"));
        match self.python.clone().or(default.filter(|p| p.exists())) {
            Some(p) => Ok(Some(p)),
            None => bail!(
                "no PyTorch reference: create the venv with `cargo xtask venv`, pass --python, or --no-reference"
            ),
        }
    }
}

/// The numbers.
#[derive(Serialize)]
pub struct BenchResult {
    /// Architecture.
    pub arch: String,
    /// Batch size.
    pub batch: usize,
    /// Input side.
    pub size: usize,
    /// Burn inference with the batch norms as trained, images per second.
    pub burn_inference_img_s: f64,
    /// Burn inference with the batch norms folded into the convolutions (what `predict` and
    /// the page run), images per second.
    pub burn_inference_folded_img_s: f64,
    /// The same folded network with every convolution, bias and activation through Burn's own
    /// operations (before `pneumoscope::arch::fused`).
    pub burn_inference_folded_burn_ops_img_s: f64,
    /// Burn training step (forward, backward, Adam), images per second.
    pub burn_train_img_s: f64,
    /// The same training step with every convolution and ReLU6 through Burn's own operations and
    /// their backward (before `pneumoscope::arch::conv` and `pneumoscope::arch::activation`: a
    /// depthwise layer's per-channel loop, 1x1 convolutions through the generic convolution
    /// backward, ReLU6 as two masked fills).
    pub burn_train_burn_conv_img_s: f64,
    /// PyTorch reference (as printed by the script), if run.
    pub pytorch: Option<serde_json::Value>,
    /// Frozen protocol: seconds to extract features once and train the head for all epochs.
    pub frozen_cached_s: f64,
    /// Same protocol recomputing the features every epoch.
    pub frozen_recomputed_s: f64,
    /// Cores available.
    pub cores: usize,
    /// Burn device used.
    pub device: String,
}

fn time_it(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_secs_f64()
}

/// Runs the benchmark.
pub fn measure(o: &BenchOptions) -> Result<BenchResult> {
    let python = o.reference_python()?;
    let spec = arch::find(&o.arch)?;
    let s = spec.input.crop;
    let device = o.device.open()?;
    let [
        burn_inference_img_s,
        burn_inference_folded_img_s,
        burn_inference_folded_burn_ops_img_s,
    ] = inference(o, &spec, &device);
    let (burn_train_img_s, burn_train_burn_conv_img_s) = training(o, &spec, &device);
    let (frozen_cached_s, frozen_recomputed_s) =
        frozen_protocol(o, &spec, &device, burn_inference_img_s);
    let pytorch = match &python {
        Some(py) => {
            // A GPU run of Burn (CUDA or Vulkan) is compared with PyTorch on the GPU (CUDA,
            // when the reference's PyTorch has it).
            let torch_device = if o.device.is_cpu() { "cpu" } else { "cuda" };
            Some(torch_reference(
                py,
                &o.arch,
                o.batch,
                o.iters,
                s,
                torch_device,
            )?)
        }
        None => None,
    };
    Ok(BenchResult {
        arch: o.arch.clone(),
        batch: o.batch,
        size: s,
        burn_inference_img_s,
        burn_inference_folded_img_s,
        burn_inference_folded_burn_ops_img_s,
        burn_train_img_s,
        burn_train_burn_conv_img_s,
        pytorch,
        frozen_cached_s,
        frozen_recomputed_s,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        device: o.device.to_string(),
    })
}

/// Inference images per second with the batch norms as trained, folded, and folded through
/// Burn's own operations (no fused convolutions).
fn inference(o: &BenchOptions, spec: &arch::ArchSpec, device: &Device) -> [f64; 3] {
    let s = spec.input.crop;
    let model = Classifier::new(spec, device).valid();
    let x = Tensor::<4>::random([o.batch, 3, s, s], Distribution::Normal(0.0, 1.0), device);
    let time = |m: &Classifier| {
        let t = time_it(o.iters, || {
            let _: Vec<f32> = m.forward(x.clone()).into_data().try_to_vec().unwrap();
        });
        (o.batch * o.iters) as f64 / t
    };
    let folded = model.clone().fold_batchnorm();
    let (as_trained, fused) = (time(&model), time(&folded));
    let burn_ops = time(&folded.with_operations(Operations::Burn));
    [as_trained, fused, burn_ops]
}

/// Training-step images per second, with this project's convolutions and with Burn's own.
fn training(o: &BenchOptions, spec: &arch::ArchSpec, device: &Device) -> (f64, f64) {
    let s = spec.input.crop;
    let ad = device.clone().autodiff();
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    let xa = Tensor::<4>::random([o.batch, 3, s, s], Distribution::Normal(0.0, 1.0), &ad);
    let y = Tensor::<1, Int>::from_data(
        TensorData::new(
            (0..o.batch as i64).map(|i| i % 4).collect::<Vec<_>>(),
            [o.batch],
        ),
        &ad,
    );
    let model = Classifier::new(spec, &ad);
    let time_steps = |ops: Operations| {
        let mut trainable = model.clone().with_operations(ops);
        let mut optim = crate::machinery::adam::optimizer(0.0, ops);
        time_it(o.iters, || {
            let l = loss_fn.forward(trainable.forward(xa.clone()), y.clone());
            let g = GradientsParams::from_grads(l.backward(), &trainable);
            trainable = optim.step(1e-4, trainable.clone(), g);
        })
    };
    let t_train = time_steps(Operations::Own);
    let t_burn_conv = time_steps(Operations::Burn);
    let n = (o.batch * o.iters) as f64;
    (n / t_train, n / t_burn_conv)
}

/// The frozen protocol's seconds with the features cached (extracted once) and recomputed
/// every epoch: one head epoch over `images` cached feature vectors (batch 100) timed.
fn frozen_protocol(
    o: &BenchOptions,
    spec: &arch::ArchSpec,
    device: &Device,
    inference_img_s: f64,
) -> (f64, f64) {
    let ad = device.clone().autodiff();
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    let mut head = Head::new(spec, &ad);
    let mut hopt = crate::machinery::adam::optimizer(0.0, Operations::Own);
    let [c, h, w] = spec.head_shape;
    let feats = Tensor::<4>::random([100, c, h, w], Distribution::Default, &ad);
    let y100 = Tensor::<1, Int>::from_data(
        TensorData::new((0..100i64).map(|i| i % 4).collect::<Vec<_>>(), [100]),
        &ad,
    );
    let steps = o.images.div_ceil(100);
    let t_head = time_it(steps, || {
        let l = loss_fn.forward(head.forward(feats.clone()), y100.clone());
        let g = GradientsParams::from_grads(l.backward(), &head);
        head = hopt.step(1e-3, head.clone(), g);
    });
    let extract = o.images as f64 / inference_img_s;
    (
        extract + o.epochs as f64 * t_head,
        o.epochs as f64 * (extract + t_head),
    )
}

fn torch_reference(
    python: &Path,
    arch: &str,
    batch: usize,
    iters: usize,
    size: usize,
    device: &str,
) -> Result<serde_json::Value> {
    let dir = tempfile_dir()?;
    let script = dir.join("bench_torch.py");
    std::fs::write(&script, TORCH_SCRIPT)?;
    let out = std::process::Command::new(python)
        .arg(&script)
        .args([
            arch,
            &batch.to_string(),
            &iters.to_string(),
            &size.to_string(),
            device,
        ])
        .output()
        .with_context(|| format!("cannot run the PyTorch reference with {}", python.display()))?;
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        bail!(
            "the PyTorch reference failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim())
        .with_context(|| format!("unexpected reference output: {line}"))
}

fn tempfile_dir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("pneumoscope-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// The side-by-side table.
pub fn table(r: &BenchResult) -> String {
    let mut s = format!(
        "{} — batch {} at {}x{} px, {} cores\n{:<34}{:>14}{:>14}\n",
        r.arch,
        r.batch,
        r.size,
        r.size,
        r.cores,
        "",
        format!("Burn ({})", r.device),
        "PyTorch"
    );
    // Three significant figures at least: a large network trains at under 1 img/s on two
    // cores, where one decimal would hide a ratio.
    let fig = |v: f64| {
        if v < 10.0 {
            format!("{v:.2}")
        } else {
            format!("{v:.1}")
        }
    };
    let py = |k: &str| {
        r.pytorch
            .as_ref()
            .and_then(|p| p[k].as_f64())
            .map(fig)
            .unwrap_or_else(|| "—".into())
    };
    let rows = [
        (
            "inference (img/s)",
            r.burn_inference_img_s,
            "inference_img_s",
        ),
        (
            "inference, batch norm folded",
            r.burn_inference_folded_img_s,
            "inference_img_s",
        ),
        (
            "inference, folded, Burn's own ops",
            r.burn_inference_folded_burn_ops_img_s,
            "inference_img_s",
        ),
        ("training step (img/s)", r.burn_train_img_s, "train_img_s"),
        (
            "training, Burn's own operations",
            r.burn_train_burn_conv_img_s,
            "train_img_s",
        ),
    ];
    for (label, burn, reference) in rows {
        s += &format!("{label:<34}{:>14}{:>14}\n", fig(burn), py(reference));
    }
    s += &format!(
        "frozen protocol, Burn: features cached {:.0} s vs recomputed every epoch {:.0} s ({:.1}x faster)\n",
        r.frozen_cached_s,
        r.frozen_recomputed_s,
        r.frozen_recomputed_s / r.frozen_cached_s
    );
    if let Some(p) = &r.pytorch {
        s += &format!(
            "PyTorch {} on {} ({} CPU threads)\n",
            p["torch"].as_str().unwrap_or("?"),
            p["device"].as_str().unwrap_or("cpu"),
            p["threads"]
        );
    }
    s
}
