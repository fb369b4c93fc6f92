//! Fine-tuning options on a small real subset: LP-FT starts from the frozen run's head, a run
//! with every option killed at any point resumes to the uninterrupted run's numbers, early
//! stopping, and the combinations that make no sense refused with the reason.

mod common;
use common::*;
use std::path::{Path, PathBuf};

/// A small manifest (8/4/2 images per class in train/val/test) in its own folder.
fn tiny_manifest(shared: &Path, dir: &Path) -> PathBuf {
    let full = build_full(shared, &dir.join("full"));
    subset(&full, &dir.join("tiny"), [8, 4, 2])
}

/// The tiny manifest and a frozen run of `epochs` on it (`DIR/frozen`), whose head LP-FT
/// starts from.
fn frozen_run(shared: &Path, dir: &Path, epochs: &str) -> (PathBuf, PathBuf) {
    let manifest = tiny_manifest(shared, dir);
    let frozen = dir.join("frozen");
    train_ok(
        shared,
        &manifest,
        &frozen,
        &["--mode", "frozen", "--epochs", epochs],
    );
    (manifest, frozen)
}

/// `train` on `manifest` into `out` with the Lite0 ImageNet weights and `extra` options.
fn train_args(shared: &Path, manifest: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let w = shared.join("weights/efficientnet-lite0-57934424.pth");
    let mut args: Vec<String> = vec![
        "train".into(),
        "--data".into(),
        manifest.display().to_string(),
        "--weights".into(),
        w.display().to_string(),
        "--batch-size".into(),
        "8".into(),
        "--out".into(),
        out.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn train(shared: &Path, manifest: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let args = train_args(shared, manifest, out, extra);
    run(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn train_ok(shared: &Path, manifest: &Path, out: &Path, extra: &[&str]) {
    let o = train(shared, manifest, out, extra);
    assert!(o.status.success(), "training failed");
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The four probabilities of each validation row of a run.
fn val_probs(run: &Path) -> Vec<[f64; 4]> {
    read_csv(&run.join("val_predictions.csv"))
        .iter()
        .map(|r| ["normal", "bacterial", "viral", "covid19"].map(|c| r[c].parse().unwrap()))
        .collect()
}

/// The run failed and its message says `why`.
fn refused(o: &std::process::Output, why: &str) {
    assert!(!o.status.success(), "accepted, yet it should say: {why}");
    assert!(stderr(o).contains(why), "{}", stderr(o));
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A frozen run's trained head is where LP-FT starts: fine-tuned with every rate at 0 and batch
/// norm frozen, the network gives the frozen run's validation probabilities. A head of another
/// architecture or of other folds is refused, and so are fine-tuning options in frozen mode.
#[test]
fn lp_ft_starts_from_the_frozen_runs_head() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (manifest, frozen) = frozen_run(&shared, dir.path(), "4");
    let lpft = dir.path().join("lpft");
    let f = frozen.to_str().unwrap();
    train_ok(
        &shared,
        &manifest,
        &lpft,
        &[
            "--mode",
            "finetune",
            "--epochs",
            "1",
            "--lr",
            "0",
            "--bn",
            "frozen",
            "--init-head",
            f,
            "--no-augment",
        ],
    );
    let (a, b) = (val_probs(&frozen), val_probs(&lpft));
    assert_eq!(a.len(), b.len());
    let max = a
        .iter()
        .zip(&b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f64::max);
    assert!(max < 1e-5, "LP-FT at rate 0 moved a probability by {max}");
    // The frozen run's head is not chance: the check above compares something learned.
    let spread = a
        .iter()
        .map(|p| p.iter().cloned().fold(0.0, f64::max))
        .sum::<f64>()
        / a.len() as f64;
    assert!(spread > 0.3, "{spread}");
    // Plain fine-tuning starts from a random head: different probabilities.
    let plain = dir.path().join("plain");
    train_ok(
        &shared,
        &manifest,
        &plain,
        &[
            "--mode",
            "finetune",
            "--epochs",
            "1",
            "--lr",
            "0",
            "--bn",
            "frozen",
            "--no-augment",
        ],
    );
    assert_ne!(val_probs(&plain), b);

    // Another architecture's run (from random initialisation: no Lite1 weights here).
    let other = dir.path().join("other-arch");
    let o = run(&[
        "train",
        "--data",
        manifest.to_str().unwrap(),
        "--out",
        other.to_str().unwrap(),
        "--mode",
        "finetune",
        "--arch",
        "efficientnet_lite1",
        "--allow-random-init",
        "--epochs",
        "1",
        "--init-head",
        f,
    ]);
    refused(&o, "trained efficientnet_lite0");
    // A cross-validation whose folds would start from a head validated elsewhere.
    let o = train(
        &shared,
        &manifest,
        &dir.path().join("cv"),
        &[
            "--mode",
            "finetune",
            "--epochs",
            "1",
            "--folds",
            "2",
            "--init-head",
            f,
        ],
    );
    refused(&o, "seen this run's validation patients");
    // Fine-tuning options in frozen mode.
    let o = train(
        &shared,
        &manifest,
        &dir.path().join("frozen-bn"),
        &["--mode", "frozen", "--epochs", "1", "--bn", "frozen"],
    );
    refused(&o, "--mode partial and finetune");
    // Contradicting augmentation options, and a border that would cover the lungs.
    let o = train(
        &shared,
        &manifest,
        &dir.path().join("x"),
        &["--no-augment", "--aug-noise", "0.1"],
    );
    refused(&o, "contradict");
    let o = train(
        &shared,
        &manifest,
        &dir.path().join("y"),
        &["--aug-border", "0.6"],
    );
    refused(&o, "covers the lungs");
}

/// Early stopping: with nothing to learn (rate 0) the first epoch stays the best, and the run
/// stops `--patience` epochs later, saying so in `timing.json`; resuming it does not train on.
#[test]
fn early_stopping_stops_after_patience_epochs() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manifest = tiny_manifest(&shared, dir.path());
    let run = dir.path().join("run");
    let opts = [
        "--mode",
        "partial",
        "--tune-blocks",
        "1",
        "--epochs",
        "6",
        "--lr",
        "0",
        "--patience",
        "2",
        "--bn",
        "frozen",
    ];
    train_ok(&shared, &manifest, &run, &opts);
    assert_eq!(read_csv(&run.join("epochs.csv")).len(), 3);
    let t = json(&run.join("timing.json"));
    assert_eq!(t["stopped_early_after_epoch"], 3);
    assert_eq!(t["best_epoch"], 1);
    assert!(t["peak_rss_bytes_this_session"].as_u64().unwrap() > 1 << 20);
    let mut again = opts.to_vec();
    again.push("--resume");
    train_ok(&shared, &manifest, &run, &again);
    assert_eq!(read_csv(&run.join("epochs.csv")).len(), 3);
}

/// Full fine-tuning with every new option on (LP-FT, group rates with layer decay, warm-up,
/// cosine, weight decay, patience, frozen batch norm, every radiograph augmentation), killed
/// at the start, between epochs and around a checkpoint, resumes to exactly the uninterrupted
/// run's epochs and validation figures. Its `timing.json` has the epoch times and peak memory.
#[test]
fn a_finetune_run_with_every_option_killed_resumes_to_the_same_result() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (manifest, frozen) = frozen_run(&shared, dir.path(), "3");
    let f = frozen.to_str().unwrap().to_string();
    let opts: Vec<&str> = vec![
        "--mode",
        "finetune",
        "--epochs",
        "3",
        "--lr",
        "1e-3",
        "--schedule",
        "cosine",
        "--init-head",
        &f,
        "--backbone-lr-scale",
        "0.1",
        "--layer-decay",
        "0.8",
        "--warmup-epochs",
        "0.5",
        "--weight-decay",
        "0.01",
        "--patience",
        "5",
        "--bn",
        "frozen",
        "--aug-brightness",
        "0.1",
        "--aug-contrast",
        "0.1",
        "--aug-gamma",
        "0.2",
        "--aug-blur",
        "1",
        "--aug-noise",
        "0.02",
        "--aug-border",
        "0.15",
    ];
    let straight = dir.path().join("straight");
    train_ok(&shared, &manifest, &straight, &opts);
    let strip = |run: &Path| {
        std::fs::read_to_string(run.join("epochs.csv"))
            .unwrap()
            .lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect::<Vec<_>>()
    };
    let want = strip(&straight);
    assert_eq!(want.len(), 4, "a header and three epochs");
    let want_metrics = json(&straight.join("metrics.json"));
    let t = json(&straight.join("timing.json"));
    assert_eq!(t["epoch_seconds"].as_array().unwrap().len(), 3);
    assert!(t["peak_rss_bytes_this_session"].as_u64().unwrap() > 1 << 20);
    let cfg = json(&straight.join("config.json"));
    assert_eq!(cfg["bn"], "frozen");
    assert!((cfg["augment"]["border"].as_f64().unwrap() - 0.15).abs() < 1e-6);

    let has = |name: &'static str| move |run: &Path| run.join(name).exists();
    type Ready = Box<dyn Fn(&Path) -> bool>;
    let kills: [(&str, Ready); 3] = [
        ("just after the start", Box::new(has("config.json"))),
        ("after epoch 1", Box::new(has("checkpoints/current"))),
        ("around epoch 2", Box::new(has("checkpoints/epoch-0002"))),
    ];
    for (i, (when, ready)) in kills.into_iter().enumerate() {
        let run = dir.path().join(format!("killed-{i}"));
        killed(&train_args(&shared, &manifest, &run, &opts), &run, ready);
        let mut again = opts.clone();
        again.push("--resume");
        let o = train(&shared, &manifest, &run, &again);
        assert!(
            o.status.success(),
            "killed {when}: resume failed: {}",
            stderr(&o)
        );
        assert_eq!(want, strip(&run), "killed {when}: epochs differ");
        assert_eq!(
            json(&run.join("metrics.json"))["val"],
            want_metrics["val"],
            "killed {when}: validation metrics differ"
        );
    }
}

/// `--only-folds` runs a screening subset of a cross-validation, a later run without it trains
/// the rest; `study` puts cross-validations side by side in a table and a figure.
#[test]
fn screening_folds_and_the_study_table() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manifest = tiny_manifest(&shared, dir.path());
    let cv = dir.path().join("cv");
    let opts = ["--mode", "frozen", "--epochs", "3", "--folds", "3"];
    let mut screen = opts.to_vec();
    screen.extend(["--only-folds", "1"]);
    train_ok(&shared, &manifest, &cv, &screen);
    assert!(cv.join("fold-1/model.bpk").is_file() && !cv.join("fold-0").exists());
    let md = std::fs::read_to_string(cv.join("cv.md")).unwrap();
    assert!(md.contains("Folds run: 1 of the 3"), "{md}");
    let o = train(
        &shared,
        &manifest,
        &cv,
        &[
            "--mode",
            "frozen",
            "--only-folds",
            "3",
            "--folds",
            "3",
            "--epochs",
            "3",
            "--resume",
        ],
    );
    refused(&o, "folds are numbered 0 to 2");
    let screened = dir.path().join("screened");
    std::fs::create_dir_all(&screened).unwrap();
    // A copy of the screening, kept before the other folds are trained.
    for f in ["cv.json", "cv.md", "cv-config.json"] {
        std::fs::copy(cv.join(f), screened.join(f)).unwrap();
    }
    copy_dir(&cv.join("fold-1"), &screened.join("fold-1"));
    let mut all = opts.to_vec();
    all.push("--resume");
    train_ok(&shared, &manifest, &cv, &all);
    assert!(cv.join("fold-0/model.bpk").is_file() && cv.join("fold-2/model.bpk").is_file());

    let out = dir.path().join("study");
    let table = ok(&[
        "study",
        "--out",
        out.to_str().unwrap(),
        &format!("all folds={}", cv.display()),
        &format!("screening={}", screened.display()),
    ]);
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| all folds") || l.starts_with("| screening"))
        .collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(
        rows[0].contains("| 3 |") && rows[0].contains(" ± "),
        "{}",
        rows[0]
    );
    assert!(rows[1].contains("| 1 of 3 |"), "{}", rows[1]);
    let png = image::open(out.join("val-macro-f1.png")).unwrap();
    assert_eq!((png.width(), png.height()), (900, 560));
    // The same folds only: both rows on fold 1.
    let table = ok(&[
        "study",
        "--out",
        out.to_str().unwrap(),
        "--only-folds",
        "1",
        &format!("all folds={}", cv.display()),
        &format!("screening={}", screened.display()),
    ]);
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| all folds") || l.starts_with("| screening"))
        .collect();
    assert!(rows.iter().all(|r| r.contains("| 1 of 3 |")), "{table}");
    fn figures(r: &str) -> Vec<String> {
        r.split('|')
            .skip(3)
            .take(6)
            .map(|c| c.trim().to_string())
            .collect()
    }
    assert_eq!(
        figures(rows[0]),
        figures(rows[1]),
        "fold 1 is the same run in both"
    );
    // A folder that is not a finished cross-validation is named.
    let o = run(&[
        "study",
        "--out",
        out.to_str().unwrap(),
        &format!("x={}", dir.path().display()),
    ]);
    refused(&o, "not a finished cross-validation");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// `--input-size`: a run at 256 px records the side, its features are extracted at that side,
/// the exported file's header says 256 (resize 293, scaled as 224 → 256), and it answers; a
/// side out of range and an architecture whose head reads a fixed-size map are refused.
#[test]
fn another_input_side_trains_exports_and_predicts() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manifest = tiny_manifest(&shared, dir.path());
    let run_dir = dir.path().join("side256");
    train_ok(
        &shared,
        &manifest,
        &run_dir,
        &["--mode", "frozen", "--epochs", "1", "--input-size", "256"],
    );
    assert_eq!(json(&run_dir.join("config.json"))["input_size"], 256);
    let model = dir.path().join("side256.pneumoscope");
    export(&run_dir, &model, &[]);
    let header = header_json(&std::fs::read(&model).unwrap());
    assert_eq!(header["input"]["crop"], 256, "{}", header["input"]);
    assert_eq!(header["input"]["resize"], 293, "{}", header["input"]);
    let image = read_csv(&manifest)
        .into_iter()
        .find(|r| r["split"] == "test")
        .unwrap()["path"]
        .clone();
    let image = if Path::new(&image).is_absolute() {
        PathBuf::from(image)
    } else {
        manifest.parent().unwrap().join(image)
    };
    let said = ok(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(said.lines().next().unwrap()).unwrap();
    let sum: f64 = v["probabilities"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_f64().unwrap())
        .sum();
    assert!((sum - 1.0).abs() < 1e-4, "{v}");

    let o = train(
        &shared,
        &manifest,
        &dir.path().join("tiny-side"),
        &["--epochs", "1", "--input-size", "32"],
    );
    refused(&o, "choose 64 to 1024");
    let o = train(
        &shared,
        &manifest,
        &dir.path().join("squeeze"),
        &[
            "--arch",
            "squeezenet1_0",
            "--epochs",
            "1",
            "--input-size",
            "256",
        ],
    );
    refused(&o, "cannot take another");
}
