//! Adults in the data: NIH ChestX-ray14 read in its own layout (partial labels, populations,
//! broken rows), and patient-grouped cross-validation over children and adults.

mod common;
use common::*;
use std::collections::{HashMap, HashSet};
use std::path::Path;

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap();
}

/// NIH rows of the shared CSV, as (file, labels, patient) of the first `n` "No Finding" and the
/// first `n` pneumonia rows.
fn nih_rows(shared: &Path, n: usize) -> (csv::StringRecord, Vec<csv::StringRecord>) {
    let mut r =
        csv::Reader::from_path(shared.join("data/nih-chestxray14/Data_Entry_2017_v2020.csv"))
            .unwrap();
    let headers = r.headers().unwrap().clone();
    let (mut normal, mut pneu) = (Vec::new(), Vec::new());
    for rec in r.records() {
        let rec = rec.unwrap();
        if &rec[1] == "No Finding" && normal.len() < n {
            normal.push(rec);
        } else if rec[1].contains("Pneumonia") && pneu.len() < n {
            pneu.push(rec);
        }
    }
    normal.extend(pneu);
    (headers, normal)
}

#[test]
fn nih_layout_partial_labels_populations_and_broken_rows() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nih = dir.path().join("ChestX-ray14");
    let (rows, young_file) = nih_release_copy(&shared, &nih);
    let out = dir.path().join("out");
    let said = ok(&[
        "data",
        "build",
        "--nih",
        nih.to_str().unwrap(),
        "--folder",
        shared.join("data/adult-normal").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(said.contains("train/adult"), "{said}");
    assert!(said.contains("pneumonia"), "{said}");
    let manifest = check_nih_manifest(&out, &rows, young_file);
    check_nih_rows_left_out(&out, manifest.len());
}

/// A copy of NIH ChestX-ray14 in the release's layout (images_001/images/*.png,
/// images_002/images/*.png, ...) at `nih`: 10 normal and 10 pneumonia rows, a child, a row whose
/// file is absent, a finding that is neither, a lateral view, an age that is not one and a
/// broken row. Returns the good rows and the child's file.
fn nih_release_copy(shared: &Path, nih: &Path) -> (Vec<csv::StringRecord>, &'static str) {
    let src = shared.join("data/nih-chestxray14/images");
    let (headers, rows) = nih_rows(shared, 10);
    // The release's layout: images_001/images/*.png, images_002/images/*.png, ...
    let mut w = csv::Writer::from_path({
        std::fs::create_dir_all(nih).unwrap();
        nih.join("Data_Entry_2017_v2020.csv")
    })
    .unwrap();
    w.write_record(&headers).unwrap();
    for (i, rec) in rows.iter().enumerate() {
        let sub = format!("images_{:03}/images", 1 + i % 2);
        copy(&src.join(&rec[0]), &nih.join(sub).join(&rec[0]));
        w.write_record(rec).unwrap();
    }
    // An under-18 row: a real image whose age says 15.
    let mut young: Vec<String> = rows[0].iter().map(str::to_string).collect();
    let young_file = "00099901_000.png";
    young[0] = young_file.into();
    young[3] = "99901".into();
    young[4] = "15".into();
    copy(
        &src.join(&rows[1][0]),
        &nih.join("images_001/images").join(young_file),
    );
    w.write_record(&young).unwrap();
    // A row whose file is not in this copy.
    let mut missing = young.clone();
    missing[0] = "00099902_000.png".into();
    missing[3] = "99902".into();
    missing[4] = "40".into();
    w.write_record(&missing).unwrap();
    // A finding that is neither, and a lateral view.
    let mut other = missing.clone();
    other[0] = rows[2][0].to_string();
    other[1] = "Effusion|Mass".into();
    w.write_record(&other).unwrap();
    let mut lateral = missing.clone();
    lateral[0] = rows[3][0].to_string();
    lateral[6] = "LL".into();
    w.write_record(&lateral).unwrap();
    // A row with an age that is not one.
    let mut bad_age = missing.clone();
    bad_age[0] = rows[4][0].to_string();
    bad_age[4] = "forty".into();
    w.write_record(&bad_age).unwrap();
    w.flush().unwrap();
    // A broken row: too few fields.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(nih.join("Data_Entry_2017_v2020.csv"))
        .unwrap();
    writeln!(f, "00099903_000.png,Pneumonia").unwrap();
    drop(f);
    (rows, young_file)
}

/// The manifest: every good row with its label, the child a child, the adult normals adults, no
/// patient in two splits, the partial label in every split. Returns the manifest's rows.
fn check_nih_manifest(
    out: &Path,
    rows: &[csv::StringRecord],
    young_file: &str,
) -> Vec<HashMap<String, String>> {
    let manifest = read_csv(&out.join("manifest.csv"));
    let nih_rows: Vec<_> = manifest.iter().filter(|r| r["source"] == "nih").collect();
    assert_eq!(nih_rows.len(), 21, "10 normal + 10 pneumonia + the child");
    let labels: HashMap<&str, &str> = nih_rows
        .iter()
        .map(|r| {
            let name = Path::new(&r["path"]).file_name().unwrap().to_str().unwrap();
            (name, r["label"].as_str())
        })
        .collect();
    for rec in rows {
        let want = if &rec[1] == "No Finding" {
            "normal"
        } else {
            "pneumonia"
        };
        assert_eq!(labels[&rec[0]], want, "{}", &rec[0]);
    }
    for r in &nih_rows {
        assert!(r["patient"].starts_with("nih:"), "{}", r["patient"]);
        let child = r["path"].ends_with(young_file);
        assert_eq!(r["population"], if child { "child" } else { "adult" });
    }
    assert!(
        manifest
            .iter()
            .filter(|r| r["source"] == "folder")
            .all(|r| r["population"] == "adult" && r["label"] == "normal")
    );
    // No patient in two splits.
    let mut split_of: HashMap<&str, &str> = HashMap::new();
    for r in &manifest {
        let prev = split_of.insert(&r["patient"], &r["split"]);
        assert!(prev.is_none() || prev == Some(r["split"].as_str()));
    }
    // The partial label reaches every split (stratified by label and population).
    for s in ["train", "val", "test"] {
        assert!(
            manifest
                .iter()
                .any(|r| r["split"] == s && r["label"] == "pneumonia"),
            "no pneumonia of unknown pathogen in {s}"
        );
    }
    manifest
}

/// The rows left out, each with its reason, and the summary's counts adding up to the
/// manifest's `images`.
fn check_nih_rows_left_out(out: &Path, images: usize) {
    let rejected = read_csv(&out.join("rejected.csv"));
    let why = |needle: &str| rejected.iter().any(|r| r["reason"].contains(needle));
    assert!(
        rejected
            .iter()
            .any(|r| r["path"].ends_with("00099902_000.png") && r["reason"].contains("missing")),
        "{rejected:?}"
    );
    assert!(why("is not an age"), "{rejected:?}");
    assert!(why("malformed row: 2 fields"), "{rejected:?}");
    let excluded = read_csv(&out.join("excluded.csv"));
    assert!(excluded.iter().any(|r| r["reason"].contains("not frontal")));
    assert!(
        excluded
            .iter()
            .any(|r| r["reason"].contains("NIH finding without pneumonia"))
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let by_pop = &summary["counts"]["images_by_population"];
    let total: u64 = ["train", "val", "test"]
        .iter()
        .flat_map(|s| ["child", "adult"].map(|p| format!("{s}/{p}")))
        .filter_map(|k| by_pop.get(&k))
        .flat_map(|m| m.as_object().unwrap().values().map(|v| v.as_u64().unwrap()))
        .sum();
    assert_eq!(total, images as u64);
}

/// Children, adults and partial labels through `train --folds 3`: every train + val image is
/// predicted once, by the fold that did not train on it; no patient is in two folds; the test
/// split takes no part; `cv.json` has the spread and the per-population breakdown.
#[test]
fn cross_validation_by_patient_with_partial_labels() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = shared.join("data");
    let full = dir.path().join("full");
    ok(&[
        "data",
        "build",
        "--kermany",
        d.join("kermany").to_str().unwrap(),
        "--covid",
        d.join("covid-chestxray-dataset").to_str().unwrap(),
        "--covid-all-findings",
        "--nih",
        d.join("nih-chestxray14").to_str().unwrap(),
        "--folder",
        d.join("adult-normal").to_str().unwrap(),
        "--out",
        full.to_str().unwrap(),
    ]);
    let manifest = subset_by(
        &full.join("manifest.csv"),
        &dir.path().join("small"),
        [8, 4, 3],
        &["label", "population"],
    );
    let rows = read_csv(&manifest);
    let cv = dir.path().join("cv");
    let w = shared.join("weights/efficientnet-lite0-57934424.pth");
    let cv_args = |extra: &[&str]| {
        let mut a = vec![
            "train",
            "--data",
            manifest.to_str().unwrap(),
            "--weights",
            w.to_str().unwrap(),
            "--epochs",
            "3",
            "--batch-size",
            "16",
            "--imbalance",
            "group",
            "--folds",
            "3",
            "--out",
            cv.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        ok(&a)
    };
    let said = cv_args(&[]);
    assert!(said.contains("macro_f1_children_and_covid19"), "{said}");
    check_out_of_fold_predictions(&cv, &rows, &manifest);
    check_cv_summary(&cv, &rows);
    // Run again with --resume: nothing is retrained, the same summary comes out.
    let before = std::fs::read(cv.join("cv.json")).unwrap();
    cv_args(&["--resume"]);
    assert_eq!(before, std::fs::read(cv.join("cv.json")).unwrap());
    check_cv_ensemble_with_itself(&cv, &before, dir.path());
}

/// Every train + val image is predicted once, out of fold, each patient in one fold, with
/// probabilities that sum to one.
fn check_out_of_fold_predictions(cv: &Path, rows: &[HashMap<String, String>], manifest: &Path) {
    let mut fold_of: HashMap<String, usize> = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    for k in 0..3 {
        let preds = read_csv(&cv.join(format!("fold-{k}/val_predictions.csv")));
        assert!(!preds.is_empty());
        for p in preds {
            assert!(
                seen.insert(p["path"].clone()),
                "{} predicted twice",
                p["path"]
            );
            let prev = fold_of.insert(p["patient"].clone(), k);
            assert!(
                prev.is_none() || prev == Some(k),
                "{} in two folds",
                p["patient"]
            );
            let sum: f64 = ["normal", "bacterial", "viral", "covid19"]
                .iter()
                .map(|c| p[*c].parse::<f64>().unwrap())
                .sum();
            assert!((sum - 1.0).abs() < 1e-4);
        }
    }
    let pool: HashSet<String> = rows
        .iter()
        .filter(|r| r["split"] != "test")
        .map(|r| {
            std::fs::canonicalize(manifest.parent().unwrap().join(&r["path"]))
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    let seen: HashSet<String> = seen
        .iter()
        .map(|p| {
            std::fs::canonicalize(manifest.parent().unwrap().join(p))
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(seen, pool, "out-of-fold predictions are not train + val");
}

/// `cv.json` and `cv.md`: the spread over three folds, the partial labels of adults counted,
/// one feature cache for all folds.
fn check_cv_summary(cv: &Path, rows: &[HashMap<String, String>]) {
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cv.join("cv.json")).unwrap()).unwrap();
    assert_eq!(s["folds"], 3);
    let f1 = &s["spread"]["macro_f1_children_and_covid19"];
    assert_eq!(f1["folds"].as_array().unwrap().len(), 3);
    assert!(f1["sd"].as_f64().unwrap() >= 0.0);
    let groups = s["pooled"]["groups"].as_array().unwrap();
    let adult = groups
        .iter()
        .find(|g| g["population"] == "adult" && g["source"] == "all")
        .unwrap();
    let n_partial = rows
        .iter()
        .filter(|r| r["split"] != "test" && r["label"] == "pneumonia")
        .count();
    assert_eq!(
        adult["pneumonia_called_covid19"]["n"].as_u64().unwrap() as usize,
        n_partial
    );
    assert!(
        std::fs::read_to_string(cv.join("cv.md"))
            .unwrap()
            .contains("| adult | nih |")
    );
    // The folds share one feature cache beside the manifest: later folds extract nothing.
    for k in 1..3 {
        let t: serde_json::Value = serde_json::from_slice(
            &std::fs::read(cv.join(format!("fold-{k}/timing.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(t["feature_extraction_seconds"].as_f64().unwrap(), 0.0);
    }
}

/// An ensemble of a cross-validation with itself averages equal probabilities: the same
/// figures as the member's.
fn check_cv_ensemble_with_itself(cv: &Path, before: &[u8], dir: &Path) {
    let ens = dir.join("cv-ens");
    ok(&[
        "cv-ensemble",
        "--out",
        ens.to_str().unwrap(),
        cv.to_str().unwrap(),
        cv.to_str().unwrap(),
    ]);
    let e: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ens.join("cv.json")).unwrap()).unwrap();
    let s: serde_json::Value = serde_json::from_slice(before).unwrap();
    for (name, sp) in s["spread"].as_object().unwrap() {
        let (a, b) = (
            sp["mean"].as_f64().unwrap(),
            e["spread"][name]["mean"].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-9, "{name}: {a} vs {b}");
    }
    assert!(
        e["config"]["arch"]
            .as_str()
            .unwrap()
            .starts_with("ensemble of")
    );
}

/// The shipped default's caution through `predict`: every answer carries the population
/// estimate, and a caution exactly when the model saw fewer than its minimum of training images
/// of the predicted class from that population; an adult called normal or COVID-19 never gets
/// one (those are errors to count, not to caption), adults called bacterial or viral
/// pneumonia (rare in training) do.
#[test]
fn predict_cautions_where_training_had_few_such_images() {
    let Some(shared) = shared() else { return };
    let model = default_model();
    let bytes = std::fs::read(&model).unwrap();
    let mut header = header_json(&bytes);
    if header.get("members").is_some() {
        // An ensemble: the member files follow its header; the first member's estimate decides.
        let (start, hlen) = header_span(&bytes);
        header = header_json(&bytes[start + hlen..]);
    }
    let pop = &header["population"];
    assert!(
        pop.is_object(),
        "the default model has no population estimate"
    );
    let min = pop["min_training_images"].as_u64().unwrap();
    let count = |class: &str, p: &str| pop["training_counts"][class][p].as_u64().unwrap();
    // Adults the model may call anything: NIH pneumonia and the collection's adult
    // bacterial and viral cases; children: the Kermany test folder.
    let nih = shared.join("data/nih-chestxray14");
    let mut r = csv::Reader::from_path(nih.join("Data_Entry_2017_v2020.csv")).unwrap();
    let mut images: Vec<std::path::PathBuf> = r
        .records()
        .map(|x| x.unwrap())
        .filter(|x| x[1].contains("Pneumonia"))
        .step_by(6)
        .take(40)
        .map(|x| nih.join("images").join(&x[0]))
        .collect();
    let k = shared.join("data/kermany/chest_xray/test");
    for sub in ["NORMAL", "PNEUMONIA"] {
        images.extend(sorted_files(&k.join(sub)).into_iter().step_by(40).take(4));
    }
    images.extend(
        sorted_files(&shared.join("data/adult-normal/normal"))
            .into_iter()
            .take(6),
    );
    let mut args: Vec<String> = vec![
        "predict".into(),
        "--model".into(),
        model.display().to_string(),
    ];
    args.extend(images.iter().map(|p| p.display().to_string()));
    let out = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (mut cautioned, mut adults) = (0, 0);
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let top = v["top"].as_str().unwrap();
        let p = v["population"]["population"].as_str().unwrap();
        let a = v["population"]["adult_probability"].as_f64().unwrap();
        assert_eq!(p == "adult", a >= 0.5, "{line}");
        let want = count(top, p) < min;
        let caution = v["caution"].as_str();
        assert_eq!(caution.is_some(), want, "{line}");
        if let Some(c) = caution {
            cautioned += 1;
            assert!(c.contains(&format!("only {}", count(top, p))), "{c}");
        }
        if p == "adult" {
            adults += 1;
            if top == "normal" || top == "covid19" {
                assert!(caution.is_none(), "{line}");
            }
        }
    }
    assert_eq!(out.lines().count(), images.len());
    assert!(
        adults >= 40,
        "only {adults} of the adult X-rays estimated adult"
    );
    assert!(cautioned >= 1, "no caution among {} images", images.len());
}
