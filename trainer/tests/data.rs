//! `data build` on the shared data and on unseen copies of the same layouts with broken files.

mod common;
use common::*;
use std::collections::{HashMap, HashSet};
use std::path::Path;

#[test]
fn builds_a_leakage_free_manifest_from_the_shared_data() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manifest = build_full(&shared, dir.path());
    let rows = read_csv(&manifest);
    assert!(rows.len() > 4000, "{} rows", rows.len());
    for col in [
        "path", "label", "patient", "source", "split", "sha256", "width", "height",
    ] {
        assert!(rows[0].contains_key(col), "missing column {col}");
    }
    let labels: HashSet<&str> = rows.iter().map(|r| r["label"].as_str()).collect();
    assert_eq!(
        labels,
        HashSet::from(["normal", "bacterial", "viral", "covid19"])
    );
    // No patient, and no duplicate group, in two splits.
    let mut split_of: HashMap<&str, &str> = HashMap::new();
    for r in &rows {
        for key in [&r["patient"], &r["dup_group"]] {
            if key.is_empty() {
                continue;
            }
            let prev = split_of.insert(key.as_str(), r["split"].as_str());
            assert!(
                prev.is_none() || prev == Some(r["split"].as_str()),
                "{key} in two splits"
            );
        }
    }
    // Every split has every class; fractions near 70/15/15.
    for s in ["train", "val", "test"] {
        for l in ["normal", "bacterial", "viral", "covid19"] {
            assert!(
                rows.iter().any(|r| r["split"] == s && r["label"] == l),
                "{s}/{l} empty"
            );
        }
    }
    let test_frac = rows.iter().filter(|r| r["split"] == "test").count() as f64 / rows.len() as f64;
    assert!(
        (0.12..0.18).contains(&test_frac),
        "test fraction {test_frac}"
    );
    // Only frontal X-rays of COVID-19 from the collection.
    let covid: Vec<_> = rows.iter().filter(|r| r["source"] == "cohen").collect();
    assert!(covid.len() > 250 && covid.iter().all(|r| r["label"] == "covid19"));
    assert!(
        covid
            .iter()
            .all(|r| ["PA", "AP", "AP Supine", "AP Erect"].contains(&r["view"].as_str()))
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap()).unwrap();
    assert!(
        summary["duplicate_groups"].as_u64().unwrap() > 0,
        "the shared data has known duplicates"
    );
    let excluded = read_csv(&dir.path().join("excluded.csv"));
    assert!(excluded.iter().any(|r| r["reason"].contains("not frontal")));
    assert!(excluded.iter().any(|r| r["reason"].contains("not X-ray")));
    assert!(dir.path().join("rejected.csv").is_file());
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap();
}

#[test]
fn unseen_layouts_and_broken_inputs() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let src = shared.join("data/kermany/chest_xray/train");
    let n_ok = deep_kermany_with_broken_files(&src, root);
    let cdir = root.join("covid-new");
    let (covid, strep) = covid_new_schema(&shared, &cdir);
    // Class folders.
    let fdir = root.join("extra");
    copy(
        &src.join("NORMAL")
            .read_dir()
            .unwrap()
            .last()
            .unwrap()
            .unwrap()
            .path(),
        &fdir.join("normal/a.jpeg"),
    );
    std::fs::create_dir_all(fdir.join("viral")).unwrap();
    std::fs::write(fdir.join("viral/broken.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap();

    let out = root.join("out");
    ok(&[
        "data",
        "build",
        "--kermany",
        root.join("downloads").to_str().unwrap(),
        "--covid",
        cdir.to_str().unwrap(),
        "--covid-all-findings",
        "--folder",
        fdir.to_str().unwrap(),
        "--val",
        "0.2",
        "--test",
        "0.2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let rows = read_csv(&out.join("manifest.csv"));
    assert_eq!(
        rows.iter().filter(|r| r["source"] == "kermany").count(),
        n_ok
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r["source"] == "cohen" && r["label"] == "covid19")
            .count(),
        covid
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r["source"] == "cohen" && r["label"] == "bacterial")
            .count(),
        strep
    );
    assert_eq!(rows.iter().filter(|r| r["source"] == "folder").count(), 1);
    check_rejections(&out);
}

/// The Kermany layout, deeper, with 12 files of each kind from `src` and broken ones; returns
/// the number of good files.
fn deep_kermany_with_broken_files(src: &Path, root: &Path) -> usize {
    let kdir = root.join("downloads/xray/v2/chest_xray/train");
    let mut n_ok = 0;
    for sub in ["NORMAL", "PNEUMONIA"] {
        let mut files: Vec<_> = std::fs::read_dir(src.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files.iter().take(12) {
            copy(f, &kdir.join(sub).join(f.file_name().unwrap()));
            n_ok += 1;
        }
    }
    let good = std::fs::read(
        src.join("NORMAL")
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    std::fs::write(
        kdir.join("NORMAL/IM-9001-0001.jpeg"),
        &good[..good.len() / 3],
    )
    .unwrap(); // truncated
    std::fs::write(kdir.join("NORMAL/IM-9002-0001.jpeg"), b"just some text").unwrap(); // text
    std::fs::write(kdir.join("NORMAL/IM-9003-0001.jpeg"), b"").unwrap(); // empty
    std::fs::write(kdir.join("PNEUMONIA/person9004_bacteria_1.txt"), b"notes").unwrap(); // wrong type
    std::fs::write(kdir.join("PNEUMONIA/person9005_fungus_1.jpeg"), &good).unwrap(); // no subtype
    n_ok
}

/// The COVID-19 collection with the newer finding schema, a missing file and a broken row, in
/// `cdir`; returns the COVID-19 and streptococcus rows written.
fn covid_new_schema(shared: &Path, cdir: &Path) -> (usize, usize) {
    let csrc = shared.join("data/covid-chestxray-dataset");
    let meta = std::fs::read_to_string(csrc.join("metadata.csv")).unwrap_or_else(|_| {
        String::from_utf8_lossy(&std::fs::read(csrc.join("metadata.csv")).unwrap()).to_string()
    });
    let mut rdr = csv::Reader::from_reader(meta.as_bytes());
    let headers = rdr.headers().unwrap().clone();
    let col = |n: &str| headers.iter().position(|h| h == n).unwrap();
    let (c_find, c_view, c_file, c_mod) = (
        col("finding"),
        col("view"),
        col("filename"),
        col("modality"),
    );
    let mut w = csv::Writer::from_path({
        std::fs::create_dir_all(cdir.join("images")).unwrap();
        cdir.join("metadata.csv")
    })
    .unwrap();
    w.write_record(&headers).unwrap();
    let mut covid = 0;
    let mut strep = 0;
    for rec in rdr.records() {
        let rec = rec.unwrap();
        let frontal =
            ["PA", "AP", "AP Supine", "AP Erect"].contains(&&rec[c_view]) && &rec[c_mod] == "X-ray";
        let mut out: Vec<String> = rec.iter().map(str::to_string).collect();
        let take = if rec[c_find].starts_with("COVID-19") && frontal && covid < 8 {
            covid += 1;
            out[c_find] = "Pneumonia/Viral/COVID-19".into();
            true
        } else if &rec[c_find] == "Streptococcus" && frontal && strep < 2 {
            strep += 1;
            out[c_find] = "Pneumonia/Bacterial/Streptococcus".into();
            true
        } else {
            false
        };
        if take {
            copy(
                &csrc.join("images").join(&rec[c_file]),
                &cdir.join("images").join(&rec[c_file]),
            );
            w.write_record(&out).unwrap();
        }
    }
    let mut missing: Vec<String> = vec![String::new(); headers.len()];
    missing[col("patientid")] = "999".into();
    missing[c_find] = "Pneumonia/Viral/COVID-19".into();
    missing[c_view] = "PA".into();
    missing[c_mod] = "X-ray".into();
    missing[col("folder")] = "images".into();
    missing[c_file] = "not-there.png".into();
    w.write_record(&missing).unwrap();
    w.flush().unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(cdir.join("metadata.csv"))
        .unwrap();
    use std::io::Write;
    writeln!(f, "1000,0,M").unwrap(); // a broken row: too few fields, no file name
    (covid, strep)
}

/// Each broken input of the build is rejected with its reason.
fn check_rejections(out: &Path) {
    let rejected = read_csv(&out.join("rejected.csv"));
    let reason = |name: &str| {
        rejected
            .iter()
            .find(|r| r["path"].contains(name))
            .map(|r| r["reason"].clone())
            .unwrap_or_else(|| panic!("{name} not rejected: {rejected:?}"))
    };
    assert!(
        reason("IM-9001").contains("corrupt or truncated"),
        "{}",
        reason("IM-9001")
    );
    assert!(reason("IM-9002").contains("not a supported image"));
    assert!(reason("IM-9003").contains("empty"));
    assert!(reason("person9004").contains("unsupported file type"));
    assert!(reason("person9005").contains("neither"));
    assert!(reason("not-there.png").contains("missing"));
    assert!(reason("broken.png").contains("cannot read image"));
    assert!(
        rejected
            .iter()
            .any(|r| r["path"].contains("metadata.csv:") && r["reason"].contains("filename")),
        "{rejected:?}"
    );
}

#[test]
fn nothing_usable_is_a_clear_failure() {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("k/NORMAL");
    std::fs::create_dir_all(&k).unwrap();
    std::fs::write(k.join("IM-0001-0001.jpeg"), b"garbage").unwrap();
    let r = run(&[
        "data",
        "build",
        "--kermany",
        dir.path().join("k").to_str().unwrap(),
        "--out",
        dir.path().join("o").to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("no usable image"), "{err}");
    let rejected = read_csv(&dir.path().join("o/rejected.csv"));
    assert_eq!(rejected.len(), 1);
}
