//! The EfficientNet-Lite0 port against PyTorch: logits of the shared ImageNet fixtures, and
//! top-1 classes through the project's own preprocessing.

mod common;
use common::*;

fn read_npy(path: &std::path::Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    npyz::NpyFile::new(&bytes[..])
        .unwrap()
        .into_vec::<f32>()
        .unwrap()
}

/// Logits of `pneumoscope forward` with the shared Lite0 weights on one input.
fn forward(shared: &std::path::Path, dir: &std::path::Path, input: &std::path::Path) -> Vec<f32> {
    forward_with(shared, dir, input, "", &[])
}

/// [`forward`] with more arguments; `tag` names the output file apart.
fn forward_with(
    shared: &std::path::Path,
    dir: &std::path::Path,
    input: &std::path::Path,
    tag: &str,
    extra: &[&str],
) -> Vec<f32> {
    let weights = shared.join("weights/efficientnet-lite0-57934424.pth");
    let out = dir.join(format!(
        "{}{}.npy",
        input.file_stem().unwrap().to_string_lossy(),
        tag
    ));
    let mut args = vec![
        "forward",
        "--arch",
        "efficientnet_lite0",
        "--weights",
        weights.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    ok(&args);
    read_npy(&out)
}

/// Batch norms folded into the convolutions (how inference loads a model) give the logits of
/// the network as published, within 1e-4 of the largest logit, and the same Grad-CAM map.
#[test]
fn folded_batch_norms_keep_logits_and_grad_cam() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    for name in ["chelsea", "coffee"] {
        let input = shared.join(format!("fixtures/imagenet/{name}_input.npy"));
        let (cam, cam_folded) = (dir.path().join("cam.npy"), dir.path().join("cam_f.npy"));
        let kept = forward_with(
            &shared,
            dir.path(),
            &input,
            "-kept",
            &["--cam-out", cam.to_str().unwrap()],
        );
        let folded = forward_with(
            &shared,
            dir.path(),
            &input,
            "-folded",
            &[
                "--fold-batchnorm",
                "--cam-out",
                cam_folded.to_str().unwrap(),
            ],
        );
        let (scale, diff) = (max_abs(&kept), max_abs_diff(&kept, &folded));
        let r = correlation(&read_npy(&cam), &read_npy(&cam_folded));
        eprintln!(
            "{name}: folded max |Δlogit| {:.2e} of max |logit|, Grad-CAM r = {r:.6}",
            diff / scale
        );
        assert!(diff <= 1e-4 * scale, "{name}: {diff} of {scale}");
        assert!(r >= 0.999, "{name}: Grad-CAM correlation {r}");
    }
}

#[test]
fn logits_match_pytorch_fixtures() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    for name in ["chelsea", "coffee"] {
        let input = shared.join(format!("fixtures/imagenet/{name}_input.npy"));
        let got = forward(&shared, dir.path(), &input);
        let want = read_npy(&shared.join(format!("fixtures/imagenet/{name}_logits.npy")));
        assert_eq!(got.len(), 1000);
        let max_diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("{name}: max |Δlogit| = {max_diff:e}");
        assert!(max_diff <= 1e-3, "{name}: max |Δlogit| = {max_diff}");
    }
}

#[test]
fn own_preprocessing_gives_reference_top1() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (name, class) in [("chelsea", 285usize), ("coffee", 967)] {
        let input = shared.join(format!("fixtures/imagenet/{name}.png"));
        let got = forward(&shared, dir.path(), &input);
        let top = (0..got.len())
            .max_by(|&a, &b| got[a].total_cmp(&got[b]))
            .unwrap();
        assert_eq!(top, class, "{name}");
    }
}

#[test]
fn wrong_weights_get_clear_errors() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.pth");
    std::fs::write(&bogus, b"this is not a checkpoint").unwrap();
    let input = shared.join("fixtures/imagenet/chelsea_input.npy");
    let out = dir.path().join("o.npy");
    let r = run(&[
        "forward",
        "--arch",
        "efficientnet_lite0",
        "--weights",
        bogus.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("bogus.pth"));
    let r = run(&[
        "forward",
        "--arch",
        "resnet9000",
        "--weights",
        bogus.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("unknown architecture"));
}
