//! Training, resuming, export, evaluation, prediction and Grad-CAM on a small real subset.

mod common;
use common::*;
use std::path::{Path, PathBuf};

/// A small manifest (20/8/6 images per class in train/val/test) in its own folder.
fn small_manifest(shared: &Path, dir: &Path) -> PathBuf {
    let full = build_full(shared, &dir.join("full"));
    subset(&full, &dir.join("small"), [20, 8, 6])
}

/// The arguments of a small frozen training run.
fn train_args(shared: &Path, manifest: &Path, out: &Path, epochs: &str) -> Vec<String> {
    let w = shared.join("weights/efficientnet-lite0-57934424.pth");
    let mut args: Vec<String> = ["train", "--data"].map(String::from).to_vec();
    args.push(manifest.display().to_string());
    args.push("--weights".into());
    args.push(w.display().to_string());
    for a in ["--mode", "frozen", "--epochs", epochs, "--batch-size", "16"] {
        args.push(a.into());
    }
    for a in ["--views", "2", "--out"] {
        args.push(a.into());
    }
    args.push(out.display().to_string());
    args
}

fn train_output(
    shared: &Path,
    manifest: &Path,
    out: &Path,
    epochs: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = train_args(shared, manifest, out, epochs);
    args.extend(extra.iter().map(|s| s.to_string()));
    run(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn train(shared: &Path, manifest: &Path, out: &Path, epochs: &str, extra: &[&str]) -> String {
    let out = train_output(shared, manifest, out, epochs, extra);
    assert!(out.status.success(), "training failed");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn train_export_evaluate_predict_gradcam() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(&shared, dir.path());
    let run_dir = dir.path().join("run");
    train(&shared, &manifest, &run_dir, "6", &[]);
    check_run_folder(&run_dir);

    let model = dir.path().join("m.pneumoscope");
    export(&run_dir, &model, &[]);
    let model_s = model.to_str().unwrap();
    check_evaluation(model_s, &manifest, dir.path());

    let rows = read_csv(&manifest);
    let test_rows: Vec<_> = rows.iter().filter(|r| r["split"] == "test").collect();
    let a = &test_rows[0]["path"];
    let b = &test_rows.last().unwrap()["path"];
    check_prediction(model_s, a, b);
    check_gradcam(model_s, a, dir.path());
    check_f16_export(&run_dir, &model, a, dir.path());
    check_broken_model_files(&shared, &model, a, dir.path());
}

/// A six-epoch run's folder: its files, one row per epoch, the last two checkpoints only.
fn check_run_folder(run_dir: &Path) {
    for f in [
        "config.json",
        "epochs.csv",
        "state.json",
        "metrics.json",
        "model.bpk",
        "checkpoints/current",
        "checkpoints/epoch-0006/model.bpk",
        "checkpoints/epoch-0006/optimizer.bpk",
        "checkpoints/epoch-0006/best.bpk",
        "checkpoints/epoch-0006/checkpoint.json",
        "checkpoints/epoch-0005/model.bpk",
    ] {
        assert!(run_dir.join(f).is_file(), "{f} missing");
    }
    assert_eq!(
        std::fs::read_to_string(run_dir.join("checkpoints/current")).unwrap(),
        "epoch-0006"
    );
    assert_eq!(read_csv(&run_dir.join("epochs.csv")).len(), 6);
    assert!(
        !run_dir.join("checkpoints/epoch-0004").exists(),
        "only the last two checkpoints are kept"
    );
}

/// `evaluate --json` and `evaluate --out` of the exported model on the small manifest.
fn check_evaluation(model_s: &str, manifest: &Path, dir: &Path) {
    // evaluate --json
    let js = ok(&[
        "evaluate",
        "--model",
        model_s,
        "--data",
        manifest.to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(js.trim()).unwrap();
    assert_eq!(v["n"], 24);
    // The export fitted the out-of-distribution statistics, so every image has a score.
    assert_eq!(v["ood"]["n"], 24, "{}", v["ood"]);
    assert!(v["ood"]["median_score"].as_f64().unwrap() > 0.0);
    for k in [
        "macro_f1",
        "accuracy",
        "per_class",
        "macro_f1_ci",
        "ece",
        "confusion",
    ] {
        assert!(!v[k].is_null(), "{k} missing");
    }
    assert_eq!(v["per_class"]["covid19"]["support"], 6);
    // The model learned something real: far above chance on held-out patients.
    assert!(v["accuracy"].as_f64().unwrap() > 0.4, "{v}");

    // evaluate --out writes the reports.
    let rep = dir.join("report");
    ok(&[
        "evaluate",
        "--model",
        model_s,
        "--data",
        manifest.to_str().unwrap(),
        "--out",
        rep.to_str().unwrap(),
    ]);
    for f in [
        "confusion_matrix.png",
        "report.md",
        "report.html",
        "metrics.json",
        "gradcam/covid19-0.png",
    ] {
        assert!(rep.join(f).is_file(), "{f} missing");
    }
    let md = std::fs::read_to_string(rep.join("report.md")).unwrap();
    assert!(md.contains("not a medical device") && md.contains("By source"));
    // ROC curves: the children's pneumonia-vs-normal curve (the small manifest's adults are
    // all COVID-19, so no adult curve has negatives), from (0, 0) to (1, 1), in the report.
    assert!(rep.join("roc.png").is_file());
    let roc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rep.join("roc.json")).unwrap()).unwrap();
    let curves = roc["curves"].as_array().unwrap();
    let children = curves
        .iter()
        .find(|c| c["name"].as_str().unwrap().starts_with("children"))
        .expect("a children's curve");
    let auroc = children["auroc"].as_f64().unwrap();
    assert!((0.5..=1.0).contains(&auroc), "{children}");
    let pts = children["points"].as_array().unwrap();
    assert_eq!(pts[0], serde_json::json!([0.0, 0.0]));
    assert_eq!(pts[pts.len() - 1], serde_json::json!([1.0, 1.0]));
    assert!(md.contains("## ROC curves") && md.contains(&format!("{auroc:.3}")));
}

/// `predict`, plain and with test-time augmentation, of two test images and a missing file.
fn check_prediction(model_s: &str, a: &str, b: &str) {
    // predict: good files answered, a missing one reported, non-zero exit.
    let r = run(&["predict", "--model", model_s, a, "/nonexistent/x.png", b]);
    assert!(!r.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&r.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let probs = &lines[0]["probabilities"];
    let sum: f64 = ["normal", "bacterial", "viral", "covid19"]
        .iter()
        .map(|c| probs[c].as_f64().unwrap())
        .sum();
    assert!((sum - 1.0).abs() < 1e-4);
    assert!(String::from_utf8_lossy(&r.stderr).contains("/nonexistent/x.png"));

    // Test-time augmentation averages the image and its mirror: a valid distribution that
    // differs from the plain one.
    let tta: serde_json::Value =
        serde_json::from_str(ok(&["predict", "--tta", "--model", model_s, a]).trim()).unwrap();
    let plain: serde_json::Value =
        serde_json::from_str(ok(&["predict", "--model", model_s, a]).trim()).unwrap();
    let classes = ["normal", "bacterial", "viral", "covid19"];
    let sum: f64 = classes
        .iter()
        .map(|c| tta["probabilities"][c].as_f64().unwrap())
        .sum();
    assert!((sum - 1.0).abs() < 1e-4);
    assert!(
        classes
            .iter()
            .any(|c| tta["probabilities"][c] != plain["probabilities"][c])
    );
}

/// `gradcam` of a test image for a chosen class.
fn check_gradcam(model_s: &str, a: &str, dir: &Path) {
    // gradcam
    let png = dir.join("cam.png");
    let js = ok(&[
        "gradcam",
        "--model",
        model_s,
        a,
        "--out",
        png.to_str().unwrap(),
        "--class",
        "viral",
    ]);
    let v: serde_json::Value = serde_json::from_str(js.trim()).unwrap();
    assert_eq!(v["class"], "viral");
    assert_eq!(v["map"]["width"], 7);
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (224, 224));
}

/// The f16 export gives the same answers within half-precision error, in a smaller file.
fn check_f16_export(run_dir: &Path, model: &Path, a: &str, dir: &Path) {
    let model_s = model.to_str().unwrap();
    // f16 export gives the same answers within half-precision error, in a smaller file.
    let m16 = dir.join("m16.pneumoscope");
    ok(&[
        "export",
        "--run",
        run_dir.to_str().unwrap(),
        "--out",
        m16.to_str().unwrap(),
        "--f16",
    ]);
    assert!(
        std::fs::metadata(&m16).unwrap().len() < std::fs::metadata(model).unwrap().len() * 6 / 10
    );
    let p32: serde_json::Value =
        serde_json::from_str(ok(&["predict", "--model", model_s, a]).trim()).unwrap();
    let p16: serde_json::Value =
        serde_json::from_str(ok(&["predict", "--model", m16.to_str().unwrap(), a]).trim()).unwrap();
    let (s32, s16) = (
        p32["ood"]["score"].as_f64().unwrap(),
        p16["ood"]["score"].as_f64().unwrap(),
    );
    assert!((s32 - s16).abs() < 0.05 * s32, "OOD score {s32} vs {s16}");
    for c in ["normal", "bacterial", "viral", "covid19"] {
        let d = (p32["probabilities"][c].as_f64().unwrap()
            - p16["probabilities"][c].as_f64().unwrap())
        .abs();
        assert!(d < 1e-2, "{c}: {d}");
    }
}

/// Corrupt, truncated and foreign model files: clear errors.
fn check_broken_model_files(shared: &Path, model: &Path, a: &str, dir: &Path) {
    // Corrupt, truncated and foreign model files: clear errors.
    let bytes = std::fs::read(model).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", bytes[..bytes.len() / 2].to_vec(), "truncated"),
        (
            "flipped",
            {
                let mut b = bytes.clone();
                let n = b.len() - 100;
                b[n] ^= 0xff;
                b
            },
            "checksum mismatch",
        ),
        (
            "foreign",
            std::fs::read(shared.join("weights/efficientnet-lite0-57934424.pth")).unwrap(),
            "not a Pneumoscope model file",
        ),
        (
            "version",
            {
                let mut b = bytes.clone();
                b[12] = 99;
                b
            },
            "version 99",
        ),
        ("empty", Vec::new(), "not a Pneumoscope model file"),
    ];
    for (name, content, needle) in cases {
        let p = dir.join(format!("{name}.pneumoscope"));
        std::fs::write(&p, content).unwrap();
        let r = run(&["predict", "--model", p.to_str().unwrap(), a]);
        assert!(!r.status.success(), "{name}");
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            err.contains(needle) && err.contains(&format!("{name}.pneumoscope")),
            "{name}: {err}"
        );
    }
}

#[test]
fn resume_continues_to_the_same_result() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(&shared, dir.path());
    let straight = dir.path().join("straight");
    train(&shared, &manifest, &straight, "5", &[]);
    let split = dir.path().join("split");
    train(&shared, &manifest, &split, "2", &[]);
    // A second plain start refuses to overwrite the run.
    let r = train_output(&shared, &manifest, &split, "2", &[]);
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stderr).contains("--resume"));
    let out = train(&shared, &manifest, &split, "5", &["--resume"]);
    let _ = out;
    let a = std::fs::read_to_string(straight.join("epochs.csv")).unwrap();
    let b = std::fs::read_to_string(split.join("epochs.csv")).unwrap();
    let strip = |s: &str| {
        s.lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        strip(&a),
        strip(&b),
        "per-epoch losses and validation metrics differ"
    );
    let ma: serde_json::Value =
        serde_json::from_slice(&std::fs::read(straight.join("metrics.json")).unwrap()).unwrap();
    let mb: serde_json::Value =
        serde_json::from_slice(&std::fs::read(split.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(ma["val"]["macro_f1"], mb["val"]["macro_f1"]);
    assert_eq!(ma["val"]["confusion"], mb["val"]["confusion"]);
    assert_eq!(
        std::fs::read_to_string(straight.join("val_predictions.csv")).unwrap(),
        std::fs::read_to_string(split.join("val_predictions.csv")).unwrap(),
        "the final model's validation probabilities differ"
    );

    // A corrupt latest checkpoint: the run falls back to the one before and still ends with
    // the uninterrupted run's numbers.
    let third = dir.path().join("third");
    train(&shared, &manifest, &third, "3", &[]);
    let latest = third.join("checkpoints/epoch-0003/model.bpk");
    let mut bytes = std::fs::read(&latest).unwrap();
    let n = bytes.len() / 2;
    bytes[n] ^= 0x55;
    std::fs::write(&latest, bytes).unwrap();
    let resumed = train_output(&shared, &manifest, &third, "5", &["--resume"]);
    assert!(resumed.status.success());
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(
        err.contains("epoch-0003/model.bpk")
            && err.contains("checksum")
            && err.contains("resuming after epoch 2"),
        "{err}"
    );
    let c = std::fs::read_to_string(third.join("epochs.csv")).unwrap();
    assert_eq!(strip(&a), strip(&c));

    // A run saved by the earlier layout (checkpoint files beside state.json) resumes to the
    // same numbers, and goes on in the current layout.
    let old = dir.path().join("old-layout");
    train(&shared, &manifest, &old, "3", &[]);
    to_earlier_layout(&old);
    assert!(!old.join("checkpoints").exists() && old.join("checkpoint-0003.bpk").is_file());
    let resumed = train_output(&shared, &manifest, &old, "5", &["--resume"]);
    assert!(resumed.status.success());
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("resuming after epoch 3"));
    let c = std::fs::read_to_string(old.join("epochs.csv")).unwrap();
    assert_eq!(strip(&a), strip(&c));
    assert!(old.join("checkpoints/epoch-0005/model.bpk").is_file());
    assert!(!old.join("checkpoint-0003.bpk").exists() && !old.join("best-module.bpk").exists());

    // Every checkpoint corrupt: a clear refusal.
    for f in std::fs::read_dir(third.join("checkpoints")).unwrap() {
        let p = f.unwrap().path();
        if p.is_dir() {
            std::fs::write(p.join("model.bpk"), b"garbage").unwrap();
        }
    }
    let r = train_output(&shared, &manifest, &third, "6", &["--resume"]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("no checkpoint of this run verifies"));
}

/// Rewrites a run folder into the layout of earlier versions: its last two checkpoints as
/// `checkpoint-NNNN.bpk` and `optimizer-NNNN.bpk` beside `state.json`, which names them with
/// their checksums, and the best module as `best-module.bpk`.
fn to_earlier_layout(run: &Path) {
    let dir = run.join("checkpoints");
    let current = std::fs::read_to_string(dir.join("current")).unwrap();
    let mut refs = Vec::new();
    let mut epochs: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("epoch-"))
        .collect();
    epochs.sort();
    let mut state = serde_json::Value::Null;
    for name in &epochs {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(name).join("checkpoint.json")).unwrap())
                .unwrap();
        let e = index["epoch"].as_u64().unwrap();
        let (model, optimizer) = (
            format!("checkpoint-{e:04}.bpk"),
            format!("optimizer-{e:04}.bpk"),
        );
        std::fs::copy(dir.join(name).join("model.bpk"), run.join(&model)).unwrap();
        std::fs::copy(dir.join(name).join("optimizer.bpk"), run.join(&optimizer)).unwrap();
        refs.push(serde_json::json!({
            "epoch": e, "model": model, "model_sha256": index["files"]["model.bpk"],
            "optimizer": optimizer, "optimizer_sha256": index["files"]["optimizer.bpk"],
        }));
        if *name == current {
            std::fs::copy(dir.join(name).join("best.bpk"), run.join("best-module.bpk")).unwrap();
            state = index["state"].clone();
        }
    }
    state["checkpoints"] = serde_json::Value::Array(refs);
    std::fs::write(
        run.join("state.json"),
        serde_json::to_vec_pretty(&state).unwrap(),
    )
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_run_killed_at_any_point_resumes_to_the_same_result() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(&shared, dir.path());
    let straight = dir.path().join("straight");
    train(&shared, &manifest, &straight, "6", &[]);
    let want = std::fs::read_to_string(straight.join("epochs.csv")).unwrap();
    let want_metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(straight.join("metrics.json")).unwrap()).unwrap();
    let strip = |s: &str| {
        s.lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect::<Vec<_>>()
    };
    let has = |name: &'static str| move |run: &Path| run.join(name).exists();
    type Ready = Box<dyn Fn(&Path) -> bool>;
    let kills: [(&str, Ready); 4] = [
        // At once: only the run's configuration exists.
        ("just after the start", Box::new(has("config.json"))),
        // While the backbone features are extracted: the first view's are cached, the rest
        // are being computed.
        (
            "during feature extraction",
            Box::new(has("features/v0.f32")),
        ),
        // Between epochs, as soon as the second checkpoint lands.
        ("after epoch 2", Box::new(has("checkpoints/epoch-0002"))),
        // While the fourth epoch's checkpoint is being written or just after.
        ("around epoch 4", Box::new(has("checkpoints/epoch-0004"))),
    ];
    for (i, (when, ready)) in kills.into_iter().enumerate() {
        let run = dir.path().join(format!("killed-{i}"));
        killed(&train_args(&shared, &manifest, &run, "6"), &run, ready);
        let resumed = train_output(&shared, &manifest, &run, "6", &["--resume"]);
        assert!(
            resumed.status.success(),
            "killed {when}: resume failed: {}",
            String::from_utf8_lossy(&resumed.stderr)
        );
        let got = std::fs::read_to_string(run.join("epochs.csv")).unwrap();
        assert_eq!(strip(&want), strip(&got), "killed {when}: epochs differ");
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("metrics.json")).unwrap()).unwrap();
        assert_eq!(
            m["val"], want_metrics["val"],
            "killed {when}: validation metrics differ"
        );
    }
    // Killed (SIGKILL) between the writes of the fourth epoch's save, forced by the
    // checkpoint module's test hook: after a file, after the index, after the switch.
    for point in ["file", "index", "current"] {
        let run = dir.path().join(format!("killed-at-{point}"));
        killed_at(
            &train_args(&shared, &manifest, &run, "6"),
            &format!("4:{point}"),
        );
        let resumed = train_output(&shared, &manifest, &run, "6", &["--resume"]);
        assert!(
            resumed.status.success(),
            "killed at {point}: resume failed: {}",
            String::from_utf8_lossy(&resumed.stderr)
        );
        let got = std::fs::read_to_string(run.join("epochs.csv")).unwrap();
        assert_eq!(
            strip(&want),
            strip(&got),
            "killed at {point}: epochs differ"
        );
        assert_eq!(
            std::fs::read(straight.join("val_predictions.csv")).unwrap(),
            std::fs::read(run.join("val_predictions.csv")).unwrap(),
            "killed at {point}: predictions differ"
        );
    }
}

/// `--devices cpu,cpu`: each step's batch is split over two replicas (one after the other on the
/// one CPU device) and their gradients added, which is the one-device step up to the order of
/// additions; a data-parallel run resumes exactly; bad device lists are refused clearly.
#[test]
fn data_parallel_training_matches_one_device() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(&shared, dir.path());
    // Without dropout (whose masks are drawn per replica) the steps are the same.
    let one = dir.path().join("one");
    train(&shared, &manifest, &one, "4", &["--dropout", "0"]);
    let two = dir.path().join("two");
    let out = train_output(
        &shared,
        &manifest,
        &two,
        "4",
        &["--devices", "cpu,cpu", "--dropout", "0"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("data-parallel training on 2 devices"), "{err}");
    let rows = |run: &Path| -> Vec<Vec<f64>> {
        std::fs::read_to_string(run.join("epochs.csv"))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| {
                let v: Vec<f64> = l.split(',').map(|x| x.parse().unwrap()).collect();
                v[..v.len() - 1].to_vec() // without the wall time
            })
            .collect()
    };
    let (a, b) = (rows(&one), rows(&two));
    assert_eq!(a.len(), 4);
    for (ra, rb) in a.iter().zip(&b) {
        for (x, y) in ra.iter().zip(rb) {
            assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "{ra:?} vs {rb:?}");
        }
    }
    // With dropout, a data-parallel run stopped after two epochs and resumed ends with the
    // uninterrupted one's numbers, exactly.
    let straight = dir.path().join("straight");
    train(
        &shared,
        &manifest,
        &straight,
        "4",
        &["--devices", "cpu,cpu"],
    );
    let split = dir.path().join("split");
    train(&shared, &manifest, &split, "2", &["--devices", "cpu,cpu"]);
    train(&shared, &manifest, &split, "4", &["--resume"]);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(split.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["device"], "cpu,cpu");
    assert_eq!(rows(&split), rows(&straight));
    assert_ne!(rows(&straight), b, "dropout changes the run");

    // Fine-tuning (BatchNorm, every layer trained) on two replicas: one epoch runs through to
    // a model.
    let ft = dir.path().join("finetune");
    let mut args = train_args(&shared, &manifest, &ft, "1");
    let mode = args.iter().position(|a| a == "frozen").unwrap();
    args[mode] = "finetune".into();
    let batch = args.iter().position(|a| a == "--batch-size").unwrap();
    args[batch + 1] = "8".into();
    args.extend(["--devices", "cpu,cpu"].map(String::from));
    let r = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let loss = rows(&ft)[0][1];
    assert!(loss.is_finite() && loss > 0.0, "{loss}");
    assert!(ft.join("model.bpk").is_file());

    for (list, needle) in [
        ("cpu,", "empty entry"),
        ("cpu,cuda:0", "all devices must be of one kind"),
        ("cuda:x", "'x' is not a device index"),
        ("cpu:1", "the CPU device has no index"),
        ("tpu:0,tpu:1", "unknown device 'tpu'"),
    ] {
        let r = train_output(
            &shared,
            &manifest,
            &dir.path().join(list),
            "1",
            &["--devices", list],
        );
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success() && err.contains(needle), "{list}: {err}");
    }
}

/// Every float tensor of a model file's classifier by its path (`backbone.blocks.3.bn1.weight`).
fn parameters(file: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::prelude::*;
    struct Visit {
        path: Vec<String>,
        out: std::collections::BTreeMap<String, Vec<f32>>,
    }
    impl ModuleVisitor for Visit {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            let enum_variant = container_type.starts_with("Enum:");
            self.path
                .push(if enum_variant { "" } else { name }.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let name: Vec<&str> = self
                .path
                .iter()
                .map(String::as_str)
                .filter(|p| !p.is_empty())
                .collect();
            let values = param.val().into_data().try_to_vec::<f32>().unwrap();
            self.out.insert(name.join("."), values);
        }
    }
    let bytes = std::fs::read(file).unwrap();
    let model = pneumoscope::model_file::ModelFile::from_bytes(&bytes)
        .unwrap()
        .load_classifier(&Device::flex())
        .unwrap();
    let mut v = Visit {
        path: Vec::new(),
        out: Default::default(),
    };
    model.visit(&mut v);
    v.out
}

#[test]
fn partial_fine_tuning_trains_only_the_last_blocks() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(&shared, dir.path());
    let partial = |out: &Path, epochs: &str, extra: &[&str]| {
        train_partial(&shared, &manifest, out, epochs, extra)
    };
    let straight = dir.path().join("straight");
    let r = partial(&straight, "2", &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // The frozen blocks' output is cached per view, like the frozen protocol's features.
    for f in ["block14-v0.f32", "block14-v1.f32"] {
        assert!(straight.join("features").join(f).is_file(), "{f} missing");
    }

    let (trained, a) = check_only_the_last_blocks_trained(&shared, &straight, dir.path());
    check_calibrated_export(&straight, &trained, &a, &manifest, dir.path());
    // Stopped after one epoch and resumed: the uninterrupted run's numbers.
    let split = dir.path().join("split");
    assert!(partial(&split, "1", &[]).status.success());
    let r = partial(&split, "2", &["--resume"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let rows = |run: &Path| -> Vec<Vec<String>> {
        read_csv(&run.join("epochs.csv"))
            .into_iter()
            .map(|r| {
                ["epoch", "train_loss", "val_accuracy", "val_macro_f1"]
                    .map(|c| r[c].clone())
                    .to_vec()
            })
            .collect()
    };
    assert_eq!(rows(&split), rows(&straight));

    check_partial_refusals(&partial, &manifest, dir.path());
}

/// A partial fine-tuning run of the last two blocks (unless `extra` says how many), batch 8.
fn train_partial(
    shared: &Path,
    manifest: &Path,
    out: &Path,
    epochs: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = train_args(shared, manifest, out, epochs);
    let mode = args.iter().position(|a| a == "frozen").unwrap();
    args[mode] = "partial".into();
    let batch = args.iter().position(|a| a == "--batch-size").unwrap();
    args[batch + 1] = "8".into();
    if !extra.contains(&"--tune-blocks") {
        args.extend(["--tune-blocks", "2"].map(String::from));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    run(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Against the ImageNet backbone: blocks 0-13 and the stem untouched, blocks 14-15 and the
/// head convolution trained (weights and batch-norm statistics). Returns the exported model
/// and its parameters.
fn check_only_the_last_blocks_trained(
    shared: &Path,
    straight: &Path,
    dir: &Path,
) -> (PathBuf, std::collections::BTreeMap<String, Vec<f32>>) {
    let trained = dir.join("partial.pneumoscope");
    export(straight, &trained, &[]);
    let imagenet = dir.join("imagenet.pneumoscope");
    let w = shared.join("weights/efficientnet-lite0-57934424.pth");
    ok(&[
        "untrained",
        "--arch",
        "efficientnet_lite0",
        "--weights",
        w.to_str().unwrap(),
        "--out",
        imagenet.to_str().unwrap(),
    ]);
    let (a, b) = (parameters(&trained), parameters(&imagenet));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let tuned = |k: &str| {
        k.starts_with("backbone.blocks.14.")
            || k.starts_with("backbone.blocks.15.")
            || k.starts_with("backbone.conv_head.")
            || k.starts_with("backbone.bn1.")
    };
    let (mut same, mut changed) = (0, 0);
    for (k, va) in &a {
        if k.starts_with("head.") {
            continue;
        }
        if tuned(k) {
            assert_ne!(va, &b[k], "{k} was not trained");
            changed += 1;
        } else {
            assert_eq!(va, &b[k], "{k} changed but is frozen");
            same += 1;
        }
    }
    assert!(
        same > 50 && changed > 10,
        "{same} frozen, {changed} trained"
    );
    (trained, a)
}

/// Calibrated export: a temperature fitted on validation, folded into the head. The classes
/// predicted stay, the validation log-likelihood does not get worse, and only the head's last
/// layer differs.
fn check_calibrated_export(
    straight: &Path,
    trained: &Path,
    a: &std::collections::BTreeMap<String, Vec<f32>>,
    manifest: &Path,
    dir: &Path,
) {
    let calibrated = dir.join("calibrated.pneumoscope");
    export(straight, &calibrated, &["--calibrate"]);
    let header =
        pneumoscope::model_file::ModelFile::read_header(&std::fs::read(&calibrated).unwrap())
            .unwrap();
    let t = header.extra["calibration"]["temperature"].as_f64().unwrap();
    assert!(t > 0.0 && t != 1.0, "temperature {t}");
    let c = parameters(&calibrated);
    for (k, v) in a {
        if k.starts_with("head.fc2.") {
            for (x, y) in v.iter().zip(&c[k]) {
                assert!((x / t as f32 - y).abs() <= 1e-5 * x.abs().max(1.0), "{k}");
            }
        } else {
            assert_eq!(v, &c[k], "{k}");
        }
    }
    let val = |model: &Path, out: &str| {
        let d = dir.join(out);
        ok(&[
            "evaluate",
            "--model",
            model.to_str().unwrap(),
            "--data",
            manifest.to_str().unwrap(),
            "--split",
            "val",
            "--out",
            d.to_str().unwrap(),
        ]);
        read_csv(&d.join("predictions.csv"))
    };
    let nll = |rows: &[std::collections::HashMap<String, String>]| {
        rows.iter()
            .map(|r| -r[&r["label"]].parse::<f64>().unwrap().max(1e-12).ln())
            .sum::<f64>()
            / rows.len() as f64
    };
    let (plain, cal) = (val(trained, "eval-plain"), val(&calibrated, "eval-cal"));
    for (p, q) in plain.iter().zip(&cal) {
        assert_eq!((&p["path"], &p["top"]), (&q["path"], &q["top"]));
    }
    assert!(
        nll(&cal) <= nll(&plain) + 1e-4,
        "{} > {}",
        nll(&cal),
        nll(&plain)
    );
}

/// Refusals with their reasons; the comparison refuses the whole list before training anything.
fn check_partial_refusals(
    partial: &dyn Fn(&Path, &str, &[&str]) -> std::process::Output,
    manifest: &Path,
    dir: &Path,
) {
    for (extra, needle) in [
        (
            vec!["--tune-blocks", "17"],
            "efficientnet_lite0 has 16 blocks; choose 1 to 16",
        ),
        (vec!["--tune-blocks", "0"], "0 is not in 1.."),
        (
            vec!["--arch", "resnet50"],
            "resnet50 is not split into blocks here",
        ),
    ] {
        let r = partial(&dir.join(extra.join("")), "1", &extra);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            !r.status.success() && err.contains(needle),
            "{extra:?}: {err}"
        );
    }
    // The comparison refuses the whole list before training anything.
    let bench = dir.join("bench");
    let r = run(&[
        "benchmark",
        "--data",
        manifest.to_str().unwrap(),
        "--archs",
        "efficientnet_lite0,resnet50,alexnet",
        "--mode",
        "partial",
        "--out",
        bench.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("alexnet, resnet50 not split into blocks here"),
        "{err}"
    );
    assert!(!bench.join("runs").exists(), "nothing trained");
}

/// `predict`'s JSON line for one image.
fn predict_one(model: &Path, image: &Path) -> serde_json::Value {
    let out = ok(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    serde_json::from_str(out.trim()).unwrap()
}

#[test]
fn an_ensemble_of_two_runs_answers_with_their_mean() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(&shared, dir.path());
    let mut members = Vec::new();
    for seed in ["1", "2"] {
        let run_dir = dir.path().join(format!("run-{seed}"));
        train(&shared, &manifest, &run_dir, "2", &["--seed", seed]);
        let model = dir.path().join(format!("m{seed}.pneumoscope"));
        export(&run_dir, &model, &["--f16"]);
        members.push(model);
    }
    let ens = dir.path().join("ensemble.pneumoscope");
    let (m1, m2, e) = (
        members[0].to_str().unwrap(),
        members[1].to_str().unwrap(),
        ens.to_str().unwrap(),
    );
    let m = manifest.to_str().unwrap();
    let said = ok(&[
        "ensemble", "--out", e, "--data", m, "--note", "test", m1, m2,
    ]);
    assert!(
        said.contains("ensemble of 2: efficientnet_lite0 + efficientnet_lite0"),
        "{said}"
    );

    // The header carries the ensemble's own validation and test metrics.
    let bytes = std::fs::read(&ens).unwrap();
    let header = header_json(&bytes);
    assert_eq!(
        header["format_version"],
        pneumoscope::model_file::ENSEMBLE_FORMAT_VERSION
    );
    assert_eq!(header["metrics"]["val"]["n"], 32);
    assert_eq!(header["metrics"]["test"]["n"], 24);
    assert_eq!(header["extra"]["note"], "test");

    // predict: the mean of the members' probabilities and out-of-distribution scores.
    let images: Vec<PathBuf> = read_csv(&manifest)
        .iter()
        .filter(|r| r["split"] == "test")
        .step_by(7)
        .map(|r| manifest.parent().unwrap().join(&r["path"]))
        .collect();
    for image in &images {
        let (a, b, both) = (
            predict_one(&members[0], image),
            predict_one(&members[1], image),
            predict_one(&ens, image),
        );
        for c in ["normal", "bacterial", "viral", "covid19"] {
            let mean = (a["probabilities"][c].as_f64().unwrap()
                + b["probabilities"][c].as_f64().unwrap())
                / 2.0;
            let got = both["probabilities"][c].as_f64().unwrap();
            assert!((got - mean).abs() < 1e-5, "{c}: {got} vs mean {mean}");
        }
        let mean =
            (a["ood"]["score"].as_f64().unwrap() + b["ood"]["score"].as_f64().unwrap()) / 2.0;
        assert!((both["ood"]["score"].as_f64().unwrap() - mean).abs() < 1e-4);
    }

    check_ensemble_evaluate_and_gradcam(&ens, &header, m, &images[0], dir.path());
    check_ensemble_refusals(&shared, &members, &bytes, &images[0], dir.path());
}

/// `evaluate` and `gradcam` take the ensemble `ens` like any model file.
fn check_ensemble_evaluate_and_gradcam(
    ens: &Path,
    header: &serde_json::Value,
    m: &str,
    image: &Path,
    dir: &Path,
) {
    let e = ens.to_str().unwrap();
    let js = ok(&["evaluate", "--model", e, "--data", m, "--json"]);
    let v: serde_json::Value = serde_json::from_str(js.trim()).unwrap();
    assert_eq!(v["n"], 24);
    assert_eq!(
        v["macro_f1"].as_f64().unwrap(),
        header["metrics"]["test"]["macro_f1"].as_f64().unwrap()
    );
    let png = dir.join("cam.png");
    let out = ok(&[
        "gradcam",
        "--model",
        e,
        "--out",
        png.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    let g: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(g["map"]["width"], 224);
    assert!(png.is_file());
}

/// Refused: one member, a corrupt member (named), members trained on other data, and a damaged
/// ensemble file (`bytes` are the ensemble's).
fn check_ensemble_refusals(
    shared: &Path,
    members: &[PathBuf],
    bytes: &[u8],
    image: &Path,
    dir: &Path,
) {
    let e = dir.join("ensemble.pneumoscope");
    let e = e.to_str().unwrap();
    let m1 = members[0].to_str().unwrap();
    let one = run(&["ensemble", "--out", e, m1]);
    assert!(!one.status.success());
    let cut = dir.join("cut.pneumoscope");
    let b1 = std::fs::read(&members[1]).unwrap();
    std::fs::write(&cut, &b1[..b1.len() / 2]).unwrap();
    let out = run(&["ensemble", "--out", e, m1, cut.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cut.pneumoscope") && err.contains("truncated"),
        "{err}"
    );
    let other = dir.join("other.pneumoscope");
    ok(&[
        "untrained",
        "--arch",
        "efficientnet_lite0",
        "--weights",
        shared
            .join("weights/efficientnet-lite0-57934424.pth")
            .to_str()
            .unwrap(),
        "--out",
        other.to_str().unwrap(),
    ]);
    let out = run(&["ensemble", "--out", e, m1, other.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("other data"), "{err}");
    let mut damaged = bytes.to_vec();
    let n = damaged.len() - 1000;
    damaged[n] ^= 0x40;
    let bad = dir.join("damaged.pneumoscope");
    std::fs::write(&bad, &damaged).unwrap();
    let out = run(&[
        "predict",
        "--model",
        bad.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("damaged.pneumoscope") && err.contains("checksum"),
        "{err}"
    );
}
