//! The torchvision ports against PyTorch. `tests/parity/make_fixtures.py` (run once per script
//! and torch/torchvision version, cached under `~/.cache/pneumoscope/parity/`) writes, for each
//! architecture, random-init weights in torchvision's configuration and file formats, an input,
//! torchvision's logits and the Grad-CAM of the top class at the documented layer (PyTorch
//! autograd, and pytorch-grad-cam). `pneumoscope forward --cam-out` must reproduce the logits
//! within 1e-3 x max |logit| and the maps with a correlation of at least 0.99.

mod common;
use common::*;
use image::imageops::FilterType;
use image::{ImageBuffer, Luma};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn read_npy(path: &Path) -> (Vec<u64>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let f = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = f.shape().to_vec();
    (shape, f.into_vec::<f32>().unwrap())
}

/// The fixture folder, generated on first use.
fn fixtures() -> Option<&'static PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let py = test_python()?;
        let script = "tests/parity/make_fixtures.py";
        let versions = std::process::Command::new(&py)
            .args([
                "-c",
                "import torch, torchvision; print(torch.__version__, torchvision.__version__)",
            ])
            .output()
            .expect("python runs");
        assert!(
            versions.status.success(),
            "the test venv lacks torch/torchvision"
        );
        let mut key = std::fs::read(workspace_dir().join(script)).unwrap();
        key.extend_from_slice(&versions.stdout);
        let key = &pneumoscope::model_file::sha256_hex(&key)[..16];
        let home = PathBuf::from(std::env::var_os("HOME").expect("HOME"));
        let root = home.join(".cache/pneumoscope/parity");
        let dir = root.join(key);
        if !dir.join("versions.json").is_file() {
            // Fixtures of another script or torch version are stale (and large): drop them.
            if let Ok(entries) = std::fs::read_dir(&root) {
                for e in entries.flatten() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
            let tmp = root.join(format!("{key}.partial"));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).unwrap();
            run_script(&py, script, &[&tmp]);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&tmp, &dir).unwrap();
        }
        Some(dir)
    })
    .as_ref()
}

/// Bilinear upsampling to `size` and min-max scaling, as pytorch-grad-cam presents its maps.
fn upsample_scaled(map: &[f32], [h, w]: [usize; 2], size: u32) -> Vec<f32> {
    let img: ImageBuffer<Luma<f32>, Vec<f32>> =
        ImageBuffer::from_raw(w as u32, h as u32, map.to_vec()).unwrap();
    let mut v = image::imageops::resize(&img, size, size, FilterType::Triangle).into_raw();
    let (lo, hi) = v
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
    v.iter_mut()
        .for_each(|x| *x = (*x - lo) / (hi - lo).max(1e-7));
    v
}

fn check(arch: &str) {
    let Some(dir) = fixtures() else { return };
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{arch}.json"))).unwrap()).unwrap();
    let weights = dir.join(meta["weights"].as_str().unwrap());
    let class = meta["class"].as_u64().unwrap();
    let out = tempfile::tempdir().unwrap();
    let logits_out = out.path().join("logits.npy");
    let cam_out = out.path().join("cam.npy");
    let run = |logits_out: &Path, cam_out: &Path, extra: &[&str]| {
        let mut args = vec![
            "forward",
            "--arch",
            arch,
            "--weights",
            weights.to_str().unwrap(),
        ];
        let input = dir.join(format!("{arch}_input.npy"));
        let class = class.to_string();
        args.extend([
            "--input",
            input.to_str().unwrap(),
            "--out",
            logits_out.to_str().unwrap(),
            "--cam-out",
            cam_out.to_str().unwrap(),
            "--cam-class",
            &class,
        ]);
        args.extend(extra);
        ok(&args);
    };
    // Batch norms folded into the convolutions (inference) against the same network as loaded.
    let (folded_logits, folded_cam) = (out.path().join("f.npy"), out.path().join("fc.npy"));
    run(&folded_logits, &folded_cam, &["--fold-batchnorm"]);
    run(&logits_out, &cam_out, &[]);
    let (_, kept) = read_npy(&logits_out);
    let (_, folded) = read_npy(&folded_logits);
    let (kept_scale, fold_diff) = (max_abs(&kept), max_abs_diff(&kept, &folded));
    let r_fold = correlation(&read_npy(&cam_out).1, &read_npy(&folded_cam).1);
    eprintln!(
        "{arch}: batch norm folded: max |Δlogit| {:.2e} of max |logit|, Grad-CAM r = {r_fold:.6}",
        fold_diff / kept_scale
    );
    assert!(
        fold_diff <= 1e-4 * kept_scale,
        "{arch}: folding the batch norms moved the logits by {fold_diff} (max {kept_scale})"
    );
    assert!(
        r_fold >= 0.999,
        "{arch}: Grad-CAM after folding correlates at {r_fold}"
    );
    let (_, got) = read_npy(&logits_out);
    let (_, want) = read_npy(&dir.join(format!("{arch}_logits.npy")));
    assert_eq!(got.len(), 1000, "{arch}: ImageNet logits expected");
    let (scale, diff) = (max_abs(&want), max_abs_diff(&got, &want));

    let (shape, cam) = read_npy(&cam_out);
    let (want_shape, want_cam) = read_npy(&dir.join(format!("{arch}_cam.npy")));
    assert_eq!(shape, want_shape, "{arch}: Grad-CAM layer resolution");
    let r_raw = correlation(&cam, &want_cam);
    let (_, lib) = read_npy(&dir.join(format!("{arch}_cam_lib.npy")));
    let up = upsample_scaled(&cam, [shape[0] as usize, shape[1] as usize], 224);
    let r_lib = correlation(&up, &lib);
    eprintln!(
        "{arch}: {} | max |Δlogit| {diff:.3e} (max |logit| {scale:.3e}, ratio {:.2e}) | Grad-CAM \
         {shape:?} r = {r_raw:.6} (autograd), {r_lib:.4} (pytorch-grad-cam, 224 px)",
        meta["weights"],
        diff / scale
    );
    assert!(
        diff <= 1e-3 * scale,
        "{arch}: max |Δlogit| {diff} > 1e-3 x {scale}"
    );
    assert!(r_raw >= 0.99, "{arch}: Grad-CAM correlation {r_raw}");
    assert!(
        r_lib >= 0.99,
        "{arch}: correlation with pytorch-grad-cam {r_lib}"
    );
}

macro_rules! parity {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check(stringify!($name));
            }
        )*
    };
}

parity!(
    alexnet,
    vgg16,
    googlenet,
    resnet50,
    wide_resnet50_2,
    resnext50_32x4d,
    densenet161,
    squeezenet1_0,
    shufflenet_v2_x1_0,
    mobilenet_v2,
    mobilenet_v3_large,
    mnasnet1_0,
);

/// The registry's multiply-accumulate counts equal PyTorch's flop counter on torchvision's and
/// timm's definitions (within 1%).
#[test]
fn gmacs_match_pytorch_flop_counter() {
    let Some(dir) = fixtures() else { return };
    let measured: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("gmacs.json")).unwrap()).unwrap();
    for spec in pneumoscope::arch::registry() {
        let want = measured[spec.name]
            .as_f64()
            .unwrap_or_else(|| panic!("no count for {}", spec.name));
        assert!(
            (spec.gmacs - want).abs() <= 0.01 * want,
            "{}: registry {} GMACs, PyTorch counts {want}",
            spec.name,
            spec.gmacs
        );
    }
}
