//! `pneumoscope benchmark` on a small real subset, split over two shards and merged: one
//! architecture with its ImageNet weights, one from random initialisation (refused without
//! --allow-random-init, then marked in every output); a finished shard is not redone.

mod common;
use common::*;
use std::path::Path;

fn benchmark(cache: &Path, args: &[&str]) -> std::process::Output {
    let o = bin()
        .arg("benchmark")
        .args(args)
        .env("PNEUMOSCOPE_WEIGHTS", cache)
        .output()
        .unwrap();
    eprintln!(
        "$ pneumoscope benchmark {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

#[test]
fn shards_merge_into_one_comparison() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let full = build_full(&shared, &dir.path().join("full"));
    let manifest = subset(&full, &dir.path().join("small"), [8, 4, 3]);
    let cache = dir.path().join("weights");
    let o = bin()
        .args(["weights", "fetch", "efficientnet_lite0", "--cache"])
        .arg(&cache)
        .arg("--weights-dir")
        .arg(shared.join("weights"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let m = manifest.to_str().unwrap();
    let (s1, s2) = (dir.path().join("s1"), dir.path().join("s2"));
    let common = [
        "--data",
        m,
        "--archs",
        "squeezenet1_0,efficientnet_lite0",
        "--epochs",
        "2",
        "--batch-size",
        "8",
    ];
    let shard = |out: &Path, i: &str, extra: &[&str]| {
        let mut a: Vec<&str> = common.to_vec();
        a.extend(["--out", out.to_str().unwrap(), "--shard", i]);
        a.extend(extra);
        benchmark(&cache, &a)
    };
    // Registry order: efficientnet_lite0 is shard 1/2, squeezenet1_0 shard 2/2.
    assert!(shard(&s1, "1/2", &[]).status.success());
    let refused = shard(&s2, "2/2", &[]);
    assert!(!refused.status.success());
    let e = String::from_utf8_lossy(&refused.stderr);
    assert!(
        e.contains("squeezenet1_0") && e.contains("--allow-random-init"),
        "{e}"
    );
    assert!(shard(&s2, "2/2", &["--allow-random-init"]).status.success());
    let again = shard(&s1, "1/2", &[]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("already done"));

    let merged = dir.path().join("merged");
    ok(&[
        "benchmark",
        "merge",
        s1.to_str().unwrap(),
        s2.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    let rows = read_csv(&merged.join("comparison.csv"));
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["architecture"], "efficientnet_lite0");
    assert!(rows[0]["weights"].starts_with("ImageNet"));
    assert_eq!(rows[1]["architecture"], "squeezenet1_0");
    assert_eq!(rows[1]["weights"], "random-init");
    for r in &rows {
        let f1: f64 = r["macro-F1"].parse().unwrap();
        assert!((0.0..=1.0).contains(&f1));
        assert!(r["inference (img/s, CPU)"].parse::<f64>().unwrap() > 0.0);
        assert!(r["normal F1"].parse::<f64>().is_ok());
    }
    assert_eq!(rows[1]["GMACs"], "0.82");
    let md = std::fs::read_to_string(merged.join("comparison.md")).unwrap();
    assert!(md.contains("Random-init rows") && md.contains("squeezenet1_0"));
    let html = std::fs::read_to_string(merged.join("comparison.html")).unwrap();
    assert!(html.contains("<tr class=random>"));
    let grid = image::open(merged.join("confusion_grid.png")).unwrap();
    assert_eq!((grid.width(), grid.height()), (1500, 260));
    let cams = image::open(merged.join("gradcam_grid.png")).unwrap();
    assert_eq!(cams.height(), 28 + 2 * 160);
    assert!(cams.width() > 190 + 160 * 4);

    // One architecture merged twice is refused.
    let o = run(&[
        "benchmark",
        "merge",
        s1.to_str().unwrap(),
        s1.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("merge each architecture once"));
}
