//! Helpers shared by the CLI tests: where `../shared` is, running the binary, small manifests.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../../../tests/common/shared.rs"]
mod shared_dir;
pub use shared_dir::{
    correlation, default_model, manifest_dir, max_abs, max_abs_diff, run_script, shared,
    sorted_files, test_python, workspace_dir,
};

/// The `pneumoscope` binary.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pneumoscope"))
}

/// Runs the binary and returns its output.
pub fn run(args: &[&str]) -> Output {
    let out = bin().args(args).output().expect("binary runs");
    eprintln!(
        "$ pneumoscope {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Starts the binary with `args` and `kill -9`s it as soon as `ready(out)` holds (SIGKILL: no
/// destructor, no flush, no clean-up runs); fails when the run ends first.
pub fn killed(args: &[String], out: &Path, ready: impl Fn(&Path) -> bool) {
    let mut child = bin()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !ready(out) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before it could be killed");
        }
        assert!(start.elapsed().as_secs() < 600, "the run never got there");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Runs the binary with `args`, killed (SIGKILL) by the checkpoint module's test hook at `at`
/// (`EPOCH:POINT`, see `PNEUMOSCOPE_KILL_AT`), and asserts that it was.
pub fn killed_at<S: AsRef<std::ffi::OsStr>>(args: &[S], at: &str) {
    let out = bin()
        .args(args)
        .env("PNEUMOSCOPE_KILL_AT", at)
        .output()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(9),
        "not killed at {at}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the binary and asserts success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "pneumoscope {} failed",
        args.join(" ")
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `export --run RUN --out OUT` and the `extra` options, asserting success; returns stdout.
pub fn export(run: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "export",
        "--run",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ok(&args)
}

/// Builds the full manifest of the shared data into `dir`.
pub fn build_full(shared: &Path, dir: &Path) -> PathBuf {
    let k = shared.join("data/kermany");
    let c = shared.join("data/covid-chestxray-dataset");
    ok(&[
        "data",
        "build",
        "--kermany",
        k.to_str().unwrap(),
        "--covid",
        c.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
    ]);
    dir.join("manifest.csv")
}

/// Reads a manifest as rows of column name → value.
pub fn read_csv(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let headers = r.headers().unwrap().clone();
    r.records()
        .map(|rec| {
            headers
                .iter()
                .zip(rec.unwrap().iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// Writes a small manifest: the first `per_class` rows of each class in each split of `full`.
pub fn subset(full: &Path, out: &Path, per_class: [usize; 3]) -> PathBuf {
    subset_by(full, out, per_class, &["label"])
}

/// Writes a small manifest: the first `per_cell` rows (train, val, test) of each split x the
/// values of the columns `by` in `full`.
pub fn subset_by(full: &Path, out: &Path, per_cell: [usize; 3], by: &[&str]) -> PathBuf {
    let mut r = csv::Reader::from_path(full).unwrap();
    let headers = r.headers().unwrap().clone();
    let col = |n: &str| headers.iter().position(|h| h == n).unwrap();
    let split_col = col("split");
    let by: Vec<usize> = by.iter().map(|n| col(n)).collect();
    let mut counts = std::collections::HashMap::new();
    std::fs::create_dir_all(out).unwrap();
    let path = out.join("manifest.csv");
    let mut w = csv::Writer::from_path(&path).unwrap();
    w.write_record(&headers).unwrap();
    for rec in r.records() {
        let rec = rec.unwrap();
        let limit = match &rec[split_col] {
            "train" => per_cell[0],
            "val" => per_cell[1],
            _ => per_cell[2],
        };
        let mut key = vec![rec[split_col].to_string()];
        key.extend(by.iter().map(|&c| rec[c].to_string()));
        let c = counts.entry(key).or_insert(0);
        if *c < limit {
            *c += 1;
            w.write_record(&rec).unwrap();
        }
    }
    w.flush().unwrap();
    path
}

/// The JSON header of a model file's bytes (after the magic, version and header length).
#[allow(dead_code)]
pub fn header_json(bytes: &[u8]) -> serde_json::Value {
    let (start, n) = header_span(bytes);
    serde_json::from_slice(&bytes[start..start + n]).unwrap()
}

/// Where a model file's header JSON starts and how long it is: after the 20-byte prefix, and
/// after the 32-byte seal from format 4 on.
pub fn header_span(bytes: &[u8]) -> (usize, usize) {
    let version = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
    let n = u32::from_le_bytes(bytes[16..20].try_into().unwrap()) as usize;
    (if version >= 4 { 52 } else { 20 }, n)
}
