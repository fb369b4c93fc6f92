//! The lung segmenter: a quick one trained on real pairs (held-out Dice, resume to the same
//! result), masks of real and broken images, the lung share of a Grad-CAM map against an
//! independent computation, and the shipped segmenter on the pairs it never saw.

mod common;
use common::*;
use std::path::{Path, PathBuf};

fn pairs(shared: &Path) -> PathBuf {
    shared.join("data/lung-masks/pairs.csv")
}

fn weights(shared: &Path) -> PathBuf {
    shared.join("weights/efficientnet-lite0-57934424.pth")
}

/// The shipped segmenter (named in `web/models/index.json`).
fn shipped_lungs() -> PathBuf {
    let dir = workspace_dir().join("web/models");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    dir.join(
        index["lungs"]
            .as_str()
            .expect("index.json names the lung segmenter"),
    )
}

fn train_args<'a>(p: &'a str, w: &'a str, out: &'a str, epochs: &'a str) -> Vec<&'a str> {
    vec![
        "lungs",
        "train",
        "--pairs",
        p,
        "--weights",
        w,
        "--out",
        out,
        "--limit",
        "10",
        "--held-out",
        "0.3",
        "--epochs",
        epochs,
    ]
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn quick_segmenter_learns_and_resumes_to_the_same_result() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (p, w) = (pairs(&shared), weights(&shared));
    let (p, w) = (p.to_str().unwrap(), w.to_str().unwrap());
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    ok(&train_args(p, w, a.to_str().unwrap(), "3"));
    // Interrupted after two epochs, then continued to three.
    ok(&train_args(p, w, b.to_str().unwrap(), "2"));
    let out = run(&train_args(p, w, b.to_str().unwrap(), "3"));
    assert!(
        !out.status.success(),
        "a second run into the same folder is refused"
    );
    // Resumed from the layout of earlier versions (decoder.bpk and optimizer.bpk beside
    // state.json, which holds their checksums); it goes on in the current layout.
    to_earlier_layout(&b);
    let mut args = train_args(p, w, b.to_str().unwrap(), "3");
    args.push("--resume");
    ok(&args);
    assert!(
        b.join("checkpoints/epoch-0003/decoder.bpk").is_file() && !b.join("decoder.bpk").exists()
    );
    // Killed while the third epoch's checkpoint was being written: the half-written folder
    // never became current, and the run resumes after epoch 2 to the same result.
    let c = dir.path().join("c");
    ok(&train_args(p, w, c.to_str().unwrap(), "2"));
    let torn = c.join("checkpoints/epoch-0003");
    std::fs::create_dir_all(&torn).unwrap();
    std::fs::write(torn.join("decoder.bpk"), b"half").unwrap();
    let mut args = train_args(p, w, c.to_str().unwrap(), "3");
    args.push("--resume");
    ok(&args);
    assert_eq!(
        json(&a.join("state.json"))["losses"],
        json(&c.join("state.json"))["losses"]
    );
    // Killed (SIGKILL) between the writes of the third epoch's save, forced by the checkpoint
    // module's test hook: after a file, after the index, after the switch. Each resumes to the
    // uninterrupted run's losses, metrics and held-out scores, bit for bit.
    for point in ["file", "index", "current"] {
        let k = dir.path().join(format!("killed-at-{point}"));
        killed_at(
            &train_args(p, w, k.to_str().unwrap(), "3"),
            &format!("3:{point}"),
        );
        let mut args = train_args(p, w, k.to_str().unwrap(), "3");
        args.push("--resume");
        ok(&args);
        assert_eq!(
            json(&a.join("state.json"))["losses"],
            json(&k.join("state.json"))["losses"],
            "killed at {point}"
        );
        assert_eq!(
            json(&a.join("metrics.json")),
            json(&k.join("metrics.json")),
            "killed at {point}"
        );
        assert_eq!(
            std::fs::read(a.join("held_out.csv")).unwrap(),
            std::fs::read(k.join("held_out.csv")).unwrap(),
            "killed at {point}"
        );
    }
    // The same losses epoch by epoch and the same held-out scores, to the last bit (the
    // record bytes themselves differ: they carry the parameters' run-time ids).
    let (sa, sb) = (json(&a.join("state.json")), json(&b.join("state.json")));
    assert_eq!(
        sa["losses"], sb["losses"],
        "resumed run differs from the uninterrupted one"
    );
    assert_eq!(sa["losses"].as_array().unwrap().len(), 3);
    let m = json(&a.join("metrics.json"));
    assert_eq!(m, json(&b.join("metrics.json")));
    assert_eq!(
        std::fs::read(a.join("held_out.csv")).unwrap(),
        std::fs::read(b.join("held_out.csv")).unwrap()
    );
    // Ten pairs per source, 30 % held out: three per source.
    let held = &m["held_out"];
    assert_eq!(held["dice"]["n"], 6, "{m}");
    for source in ["openist", "cohen"] {
        assert_eq!(m["by_source"][source]["dice"]["n"], 3, "{m}");
    }
    // A decoder that has learnt nothing scores about 0.4 (the lungs' share of the image);
    // three epochs on fourteen pairs reach about 0.9.
    let dice = held["dice"]["mean"].as_f64().unwrap();
    assert!(dice > 0.8, "held-out Dice {dice}");
    // `lungs evaluate` on the file's own held-out list gives the same figures.
    let model = a.join("lungs.pneumoscope");
    let again: serde_json::Value = serde_json::from_str(&ok(&[
        "lungs",
        "evaluate",
        "--model",
        model.to_str().unwrap(),
        "--pairs",
        p,
    ]))
    .unwrap();
    assert_eq!(again, m);
    // A segmenter file is not a classifier, and the reverse.
    let img = shared.join("data/adult-normal/normal/openist-10-19-500-500-100.jpg");
    let out = run(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lung segmenter"));
    // A classifier without a lung section (the earlier light model) is no segmenter.
    let classifier = workspace_dir().join("web/models/efficientnet_lite0-frozen-v1.pneumoscope");
    let out = run(&[
        "lungs",
        "predict",
        "--model",
        classifier.to_str().unwrap(),
        img.to_str().unwrap(),
        "--out",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("carries no lung segmenter"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The npy file of a float32 map (little-endian, as `pneumoscope` writes them).
fn npy(path: &str) -> Vec<f32> {
    let b = std::fs::read(path).unwrap();
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    b[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Both shipped classifiers carry the shipped segmenter (decoder only, their Lite0 network's
/// frozen backbone as its encoder): `gradcam` without `--lungs` gives the lung share, mask and
/// reason that the segmenter's own file gives; `lungs embed` puts it into a model file whose
/// Lite0 backbone has the ImageNet weights, refuses a file without a Lite0 network and a
/// damaged segmenter, and a damaged lung section is refused by name.
#[test]
fn the_shipped_classifiers_carry_the_segmenter() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let lungs = shipped_lungs();
    let img = sorted_files(&shared.join("data/nih-chestxray14/images"))[5].clone();
    let light = workspace_dir().join("web/models/efficientnet_lite0-adults-v2.pneumoscope");
    let source = |bytes: &[u8]| header_json(bytes)["weight_source"].clone();
    let shipped_source = source(&std::fs::read(&lungs).unwrap());
    for (k, model) in [default_model(), light].iter().enumerate() {
        let inside = header_json(&std::fs::read(model).unwrap())["lungs"]["segmenter"].clone();
        if inside["weight_source"] == shipped_source {
            // The shipped segmenter's decoder on the ImageNet encoder the model kept frozen.
            let prefix = dir.path().join(k.to_string());
            check_segmenter_inside_and_apart(model, &lungs, &img, &prefix);
        } else {
            // A decoder trained on the model's own (fine-tuned) Lite0 backbone.
            check_own_backbone_segmenter(&shared, model, &inside, &lungs, dir.path());
        }
    }
    let with = check_embedding(&shared, &lungs, &img, dir.path());
    check_damaged_lung_section(&with, &img, dir.path());
    check_embedding_refusals(&lungs, dir.path());
}

/// Grad-CAM of `img` with `model`'s own segmenter and with the shipped segmenter's file `lungs`
/// gives the same lung share, reason, regions and mask (files written under `prefix`-).
fn check_segmenter_inside_and_apart(model: &Path, lungs: &Path, img: &Path, prefix: &Path) {
    let cam = |extra: &[&str], name: &str| -> serde_json::Value {
        let out = PathBuf::from(format!("{}-{name}.png", prefix.display()));
        let mut args = vec!["gradcam", "--model", model.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.extend([img.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        serde_json::from_str(&ok(&args)).unwrap()
    };
    let inside = cam(&[], "inside");
    let apart = cam(&["--lungs", lungs.to_str().unwrap()], "apart");
    eprintln!("{}: {inside}", model.display());
    let share = |l: &serde_json::Value| l["lung_share"].as_f64().expect("a lung share");
    assert!(
        (share(&inside) - share(&apart)).abs() < 1e-4,
        "{inside} vs {apart}"
    );
    assert_eq!(inside["lung_reason"], apart["lung_reason"]);
    assert_eq!(
        inside["lung_shape"]["regions"],
        apart["lung_shape"]["regions"]
    );
    let (a, b) = (
        npy(inside["lung_mask_npy"].as_str().unwrap()),
        npy(apart["lung_mask_npy"].as_str().unwrap()),
    );
    let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert!(
        differ * 1000 <= a.len(),
        "{differ} of {} mask pixels differ",
        a.len()
    );
    let bytes = std::fs::read(model).unwrap();
    let header = header_json(&bytes);
    assert!(
        header["lungs"]["encoder_network"].is_u64(),
        "{} has no lung section",
        model.display()
    );
}

/// A classifier whose segmenter was trained on its own fine-tuned Lite0 backbone (`lungs train
/// --encoder-model`): the header names that network of the file, the ImageNet segmenter
/// cannot be embedded in it (its backbone computes other features), and the embedded one
/// meets the shipped segmenter's Dice floors on its held-out pairs.
fn check_own_backbone_segmenter(
    shared: &Path,
    model: &Path,
    inside: &serde_json::Value,
    imagenet: &Path,
    dir: &Path,
) {
    let source = inside["weight_source"].as_str().unwrap_or_default();
    assert!(
        source.starts_with("network "),
        "{}: {inside}",
        model.display()
    );
    let out = embed(
        model,
        imagenet,
        &dir.join("imagenet-into-finetuned.pneumoscope"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("does not compute the segmenter's encoder"),
        "{err}"
    );
    check_held_out_dice(model, shared);
}

/// Embedding: into a model file made afresh from the ImageNet Lite0 weights; the file written
/// segments. Returns it.
fn check_embedding(shared: &Path, lungs: &Path, img: &Path, dir: &Path) -> PathBuf {
    let weights = weights(shared);
    let plain = dir.join("lite0.pneumoscope");
    ok(&[
        "untrained",
        "--arch",
        "efficientnet_lite0",
        "--weights",
        weights.to_str().unwrap(),
        "--f16",
        "--out",
        plain.to_str().unwrap(),
    ]);
    let with = dir.join("lite0-lungs.pneumoscope");
    let summary: serde_json::Value = serde_json::from_str(&ok(&[
        "lungs",
        "embed",
        "--model",
        plain.to_str().unwrap(),
        "--lungs",
        lungs.to_str().unwrap(),
        "--out",
        with.to_str().unwrap(),
    ]))
    .unwrap();
    eprintln!("embed: {summary}");
    assert!(
        summary["encoder_difference"].as_f64().unwrap() <= 1e-5,
        "{summary}"
    );
    let added = summary["added_bytes"].as_i64().unwrap();
    assert!((50_000..3_000_000).contains(&added), "{summary}");
    let masks = dir.join("masks");
    let line: serde_json::Value = serde_json::from_str(&ok(&[
        "lungs",
        "predict",
        "--model",
        with.to_str().unwrap(),
        img.to_str().unwrap(),
        "--out",
        masks.to_str().unwrap(),
    ]))
    .unwrap();
    assert!(line["lung_area"].as_f64().unwrap() > 0.05, "{line}");
    with
}

/// A damaged lung section is refused by name.
fn check_damaged_lung_section(with: &Path, img: &Path, dir: &Path) {
    let mut bytes = std::fs::read(with).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0x40;
    let bad = dir.join("bad.pneumoscope");
    std::fs::write(&bad, &bytes).unwrap();
    let out = run(&[
        "predict",
        "--model",
        bad.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("lung segmenter weights"),
        "{err}"
    );
}

/// `lungs embed --model MODEL --lungs LUNGS --out OUT`.
fn embed(model: &Path, lungs: &Path, out: &Path) -> std::process::Output {
    run(&[
        "lungs",
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--lungs",
        lungs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
}

/// An untrained model file of `arch` with random-init weights (no ImageNet weights reachable),
/// in `dir`, in f16 when `f16`.
fn untrained_random(dir: &Path, arch: &str, f16: bool) -> PathBuf {
    let suffix = if f16 { "-f16" } else { "" };
    let model = dir.join(format!("{arch}-random{suffix}.pneumoscope"));
    let mut args = vec![
        "untrained",
        "--arch",
        arch,
        "--out",
        model.to_str().unwrap(),
    ];
    if f16 {
        args.push("--f16");
    }
    let made = bin()
        .env("PNEUMOSCOPE_WEIGHTS", dir.join("no-weights"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    model
}

/// Model files made without ImageNet weights: a Lite1 (no Lite0 network to lend its backbone)
/// and a random-init Lite0 (other features than the segmenter's encoder) are refused.
fn check_embedding_refusals(lungs: &Path, dir: &Path) {
    for (arch, why) in [
        ("efficientnet_lite1", "no efficientnet_lite0 network"),
        (
            "efficientnet_lite0",
            "does not compute the segmenter's encoder features",
        ),
    ] {
        let model = untrained_random(dir, arch, false);
        let out = embed(&model, lungs, &dir.join("refused.pneumoscope"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{arch}: {err}");
    }
}

#[test]
fn masks_of_real_broken_and_tiny_images() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let good = shared.join("data/adult-normal/normal/openist-10-19-500-500-100.jpg");
    let truncated = dir.path().join("truncated.png");
    let bytes = std::fs::read(
        shared.join("data/nih-chestxray14/images").join(
            sorted_files(&shared.join("data/nih-chestxray14/images"))[0]
                .file_name()
                .unwrap(),
        ),
    )
    .unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let tiny = dir.path().join("tiny.png");
    image::GrayImage::new(8, 8).save(&tiny).unwrap();
    let empty = dir.path().join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    let out_dir = dir.path().join("masks");
    let model = shipped_lungs();
    let out = run(&[
        "lungs",
        "predict",
        "--model",
        model.to_str().unwrap(),
        good.to_str().unwrap(),
        truncated.to_str().unwrap(),
        tiny.to_str().unwrap(),
        empty.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "three of four images fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for bad in [&truncated, &tiny, &empty] {
        assert!(
            stderr.contains(&format!("error: {}", bad.display())),
            "{} is named: {stderr}",
            bad.display()
        );
    }
    assert!(
        stderr.contains("3 of 4 images could not be segmented"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "the good image is still segmented");
    let mask = image::open(lines[0]["mask"].as_str().unwrap())
        .unwrap()
        .to_luma8();
    let original = image::open(&good).unwrap();
    assert_eq!(mask.dimensions(), (original.width(), original.height()));
    let area = lines[0]["lung_area"].as_f64().unwrap();
    assert!((0.15..0.6).contains(&area), "lung area {area}");
    assert!(Path::new(lines[0]["overlay"].as_str().unwrap()).is_file());
}

#[test]
fn shipped_segmenter_on_its_held_out_pairs() {
    let Some(shared) = shared() else { return };
    check_held_out_dice(&shipped_lungs(), &shared);
}

/// `lungs evaluate` of a segmenter (its own file, or a classifier's that carries one) on the
/// pairs its header holds out: the floors under the model card's figures, per source.
fn check_held_out_dice(model: &Path, shared: &Path) {
    let p = pairs(shared);
    let m: serde_json::Value = serde_json::from_str(&ok(&[
        "lungs",
        "evaluate",
        "--model",
        model.to_str().unwrap(),
        "--pairs",
        p.to_str().unwrap(),
    ]))
    .unwrap();
    // The figures the model card reports (held-out pairs, per source).
    let dice = |s: &str| m["by_source"][s]["dice"]["mean"].as_f64().unwrap();
    eprintln!(
        "held-out Dice: openist {}, cohen {}",
        dice("openist"),
        dice("cohen")
    );
    assert!(dice("openist") >= 0.93, "{m}");
    assert!(dice("cohen") >= 0.88, "{m}");
}

#[test]
fn lung_share_of_a_gradcam_map_against_numpy() {
    let Some(shared) = shared() else { return };
    let Some(python) = test_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let lungs = shipped_lungs();
    let model = default_model();
    for img in [
        shared.join("data/adult-normal/normal/openist-10-19-500-500-100.jpg"),
        sorted_files(&shared.join("data/nih-chestxray14/images"))[3].clone(),
    ] {
        let out = dir.path().join("cam.png");
        let line: serde_json::Value = serde_json::from_str(&ok(&[
            "gradcam",
            "--model",
            model.to_str().unwrap(),
            "--lungs",
            lungs.to_str().unwrap(),
            img.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]))
        .unwrap();
        let share = line["lung_share"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&share));
        let masks = dir.path().join("masks");
        let m: serde_json::Value = serde_json::from_str(&ok(&[
            "lungs",
            "predict",
            "--model",
            lungs.to_str().unwrap(),
            img.to_str().unwrap(),
            "--out",
            masks.to_str().unwrap(),
        ]))
        .unwrap();
        // The map covers the display network's centre crop; EfficientNet-Lite resizes the
        // shorter side to 8/7 of the crop (the registry's rule), e.g. 297 → 260 for Lite2.
        let side = line["map"]["width"].as_u64().unwrap();
        let resize = (side * 8 / 7).to_string();
        let check: serde_json::Value = serde_json::from_str(&run_script(
            &python,
            "tests/lungs/share.py",
            &[
                Path::new(line["heat_npy"].as_str().unwrap()),
                Path::new(line["lungs_npy"].as_str().unwrap()),
                Path::new(m["mask"].as_str().unwrap()),
                Path::new(&resize),
                Path::new(&side.to_string()),
                Path::new("3"),
            ],
        ))
        .unwrap();
        eprintln!("{}: share {share}, numpy {check}", img.display());
        let exported = check["share_exported"].as_f64().unwrap();
        assert!((exported - share).abs() < 1e-4, "{share} vs {check}");
        let independent = check["share_independent"].as_f64().unwrap();
        assert!((independent - share).abs() < 0.01, "{share} vs {check}");
        assert!(
            check["crop_mask_agreement"].as_f64().unwrap() > 0.98,
            "{check}"
        );
    }
}

/// The bounding box (x0, y0, x1, y1) of the white pixels of a mask PNG.
fn white_box(path: &str) -> Option<(u32, u32, u32, u32)> {
    let m = image::open(path).unwrap().to_luma8();
    let mut b: Option<(u32, u32, u32, u32)> = None;
    for (x, y, p) in m.enumerate_pixels().filter(|(_, _, p)| p.0[0] > 127) {
        let _ = p;
        b = Some(match b {
            None => (x, y, x + 1, y + 1),
            Some((a, c, d, e)) => (a.min(x), c.min(y), d.max(x + 1), e.max(y + 1)),
        });
    }
    b
}

#[test]
fn lung_focused_input_trains_exports_and_explains() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let full = build_full(&shared, &dir.path().join("full"));
    let manifest = subset(&full, &dir.path().join("small"), [6, 3, 2]);
    let rows = read_csv(&manifest);
    let (m, w) = (manifest.to_str().unwrap(), weights(&shared));
    let lungs = shipped_lungs();
    let run_dir = dir.path().join("run");
    let train = |extra: &[&str]| {
        let mut a = vec![
            "train",
            "--data",
            m,
            "--weights",
            w.to_str().unwrap(),
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--input",
            "lungs",
            "--out",
            run_dir.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        run(&a)
    };
    let refused = train(&[]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("--lungs"),
        "{err}"
    );
    let done = train(&["--lungs", lungs.to_str().unwrap()]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(json(&run_dir.join("config.json"))["region"], "lungs");

    // Every image's crop, against the segmenter's own mask of the whole image (`lungs
    // predict`): it holds the lungs' box, with a margin no wider than the rule's.
    let cache = dir.path().join("small/cache");
    let crops_csv = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.starts_with("crops-") && n.ends_with(".csv")
        })
        .expect("the lung crops beside the cache");
    let crops = read_csv(&crops_csv);
    assert_eq!(crops.len(), rows.len());
    let (resolved, lines) = lung_masks(&lungs, &rows, dir.path());
    check_crops_hold_the_lungs(&lines, &crops);
    check_lung_focused_export(&run_dir, &resolved[0], &crops, dir.path());
}

/// `lungs predict` of every image of `rows` (paths relative to `dir/small`) with the segmenter
/// `lungs`: the images' paths, and the lines it printed.
fn lung_masks(
    lungs: &Path,
    rows: &[std::collections::HashMap<String, String>],
    dir: &Path,
) -> (Vec<String>, String) {
    let masks = dir.join("masks");
    let mut args = vec![
        "lungs".to_string(),
        "predict".into(),
        "--model".into(),
        lungs.display().to_string(),
        "--out".into(),
        masks.display().to_string(),
    ];
    let resolved: Vec<String> = rows
        .iter()
        .map(|r| {
            let p = Path::new(&r["path"]);
            if p.is_absolute() {
                p.display().to_string()
            } else {
                dir.join("small").join(p).display().to_string()
            }
        })
        .collect();
    args.extend(resolved.iter().cloned());
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let lines = ok(&arg_refs);
    (resolved, lines)
}

/// Each crop holds the lungs' box of its mask (one line of `lungs predict` per crop), within
/// the image and with a margin no wider than the rule's; nine images in ten have lungs found.
fn check_crops_hold_the_lungs(lines: &str, crops: &[std::collections::HashMap<String, String>]) {
    let mut found = 0;
    for (line, c) in lines.lines().zip(crops) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let Some((x0, y0, x1, y1)) = white_box(v["mask"].as_str().unwrap()) else {
            assert_eq!(c["lungs_found"], "false", "{line}");
            continue;
        };
        assert_eq!(c["lungs_found"], "true", "{line}");
        found += 1;
        let n = |k: &str| c[k].parse::<u32>().unwrap();
        let (cx, cy, cw, ch) = (n("x"), n("y"), n("width"), n("height"));
        let (w, h) = image::image_dimensions(v["file"].as_str().unwrap()).unwrap();
        assert!(cx + cw <= w && cy + ch <= h, "crop {c:?} outside {w}x{h}");
        // The mask PNG is bilinear at full size, the crop from the grid: a few pixels apart.
        let slack = (w.max(h) / 64).max(4);
        assert!(
            cx <= x0 + slack && cy <= y0 + slack && cx + cw + slack >= x1 && cy + ch + slack >= y1,
            "crop {c:?} does not hold the lungs ({x0}, {y0})-({x1}, {y1})"
        );
        let (bw, bh) = ((x1 - x0) as f32, (y1 - y0) as f32);
        let allowed = |box_len: f32| box_len * 1.2 + 2.0 * slack as f32;
        assert!(
            cw as f32 <= allowed(bw) && ch as f32 <= allowed(bh),
            "crop {c:?} larger than the margin allows for a {bw}x{bh} box"
        );
    }
    assert!(
        found * 10 >= crops.len() * 9,
        "{found} of {} with lungs",
        crops.len()
    );
}

/// Exported, the file says it takes lung-focused input and carries the segmenter; the
/// Grad-CAM of `img` covers its lung crop, in which the lungs fill more of the view.
fn check_lung_focused_export(
    run_dir: &Path,
    img: &str,
    crops: &[std::collections::HashMap<String, String>],
    dir: &Path,
) {
    let model = dir.join("lungs-input.pneumoscope");
    export(run_dir, &model, &["--f16"]);
    let bytes = std::fs::read(&model).unwrap();
    let header = header_json(&bytes);
    assert_eq!(header["region"], "lungs");
    assert!(header["lungs"]["encoder_network"].is_u64(), "{header}");
    let cam = |model: &Path, name: &str| -> serde_json::Value {
        let out = dir.join(format!("{name}.png"));
        serde_json::from_str(&ok(&[
            "gradcam",
            "--model",
            model.to_str().unwrap(),
            img,
            "--out",
            out.to_str().unwrap(),
        ]))
        .unwrap()
    };
    let focused = cam(&model, "focused");
    let whole = cam(&default_model(), "whole");
    eprintln!("lung crop: {focused}\nwhole: {whole}");
    let crop = &focused["lung_crop"];
    assert_eq!(crop["x"].to_string(), crops[0]["x"], "{focused}");
    assert_eq!(crop["width"].to_string(), crops[0]["width"], "{focused}");
    let area = |v: &serde_json::Value| v["lung_area"].as_f64().unwrap();
    assert!(
        area(&focused) > area(&whole) * 1.2,
        "lung area {} in the crop vs {} in the whole image",
        area(&focused),
        area(&whole)
    );
    assert!(whole.get("lung_crop").is_none());
    let p: serde_json::Value = serde_json::from_str(
        ok(&["predict", "--model", model.to_str().unwrap(), img])
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert!(p["top"].is_string(), "{p}");
}

/// Rewrites a segmenter run into the layout of earlier versions: the current checkpoint's
/// `decoder.bpk` and `optimizer.bpk` beside `state.json`, which carries their checksums.
fn to_earlier_layout(run: &std::path::Path) {
    let dir = run.join("checkpoints");
    let current = std::fs::read_to_string(dir.join("current")).unwrap();
    let index = json(&dir.join(&current).join("checkpoint.json"));
    for f in ["decoder.bpk", "optimizer.bpk"] {
        std::fs::copy(dir.join(&current).join(f), run.join(f)).unwrap();
    }
    let mut state = index["state"].clone();
    state["decoder_sha256"] = index["files"]["decoder.bpk"].clone();
    state["optimizer_sha256"] = index["files"]["optimizer.bpk"].clone();
    std::fs::write(
        run.join("state.json"),
        serde_json::to_vec_pretty(&state).unwrap(),
    )
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `lungs train --encoder-model`: the decoder trained on the backbone of a classifier file
/// whose Lite0 network is not ImageNet's (here a randomly initialised one, standing in for a
/// fine-tuned one). The ImageNet segmenter cannot be embedded in that file; the one trained on
/// its own backbone can, with no difference between the encoders. A file without a Lite0
/// network, a damaged one, and `--weights` beside it are refused with the file named.
#[test]
fn segmenter_on_a_classifiers_own_backbone_embeds_in_it() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let untrained = |arch: &str, f16: &str| untrained_random(dir.path(), arch, !f16.is_empty());
    let model = untrained("efficientnet_lite0", "-f16");
    let p = pairs(&shared);
    let args = |encoder: &Path, out: &Path| -> Vec<String> {
        [
            "lungs",
            "train",
            "--pairs",
            p.to_str().unwrap(),
            "--encoder-model",
            encoder.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--limit",
            "4",
            "--held-out",
            "0.5",
            "--epochs",
            "1",
            "--f16",
        ]
        .map(String::from)
        .to_vec()
    };
    let run_dir = dir.path().join("own");
    let a = args(&model, &run_dir);
    ok(&strs(&a));
    let seg = run_dir.join("lungs.pneumoscope");
    let embed_into = |lungs: &Path, out: &str| embed(&model, lungs, &dir.path().join(out));
    let refused = embed_into(&shipped_lungs(), "imagenet.pneumoscope");
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr)
                .contains("does not compute the segmenter's encoder features")
    );
    let out = embed_into(&seg, "own.pneumoscope");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(summary["encoder_difference"], 0.0, "{summary}");
    // `lungs evaluate` reads the segmenter inside the classifier's file as from its own file.
    let evaluate = |m: &Path| -> serde_json::Value {
        let args = [
            "lungs",
            "evaluate",
            "--model",
            m.to_str().unwrap(),
            "--pairs",
        ];
        serde_json::from_str(&ok(&[&args[..], &[p.to_str().unwrap()]].concat())).unwrap()
    };
    assert_eq!(
        evaluate(&seg),
        evaluate(&dir.path().join("own.pneumoscope"))
    );
    // The segmenter's header says whose backbone it is.
    let bytes = std::fs::read(&seg).unwrap();
    let header = String::from_utf8_lossy(&bytes[..bytes.len().min(1 << 16)]);
    assert!(header.contains("network 1 of efficientnet_lite0-random-f16.pneumoscope"));
    // Refusals, each naming the file and the reason.
    let damaged = dir.path().join("damaged.pneumoscope");
    let mut bytes = std::fs::read(&model).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xff;
    std::fs::write(&damaged, bytes).unwrap();
    for (k, (file, why)) in [
        (untrained("efficientnet_lite0", ""), "stored as F32"),
        (
            untrained("efficientnet_lite1", "-f16"),
            "no efficientnet_lite0 network",
        ),
        (damaged, "damaged.pneumoscope"),
    ]
    .into_iter()
    .enumerate()
    {
        let out_dir = dir.path().join(format!("refused-{k}"));
        let out = run(&strs(&args(&file, &out_dir)));
        let err = String::from_utf8_lossy(&out.stderr);
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(
            !out.status.success() && err.contains(why) && err.contains(name),
            "{err}"
        );
        // Refused before anything is written: no run folder is left behind.
        assert!(!out_dir.exists(), "{} was created", out_dir.display());
    }
    let mut both = args(&model, &dir.path().join("both"));
    both.extend(["--weights".into(), weights(&shared).display().to_string()]);
    let out = run(&strs(&both));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}
