//! Locating the shared material (real data, weights, fixtures), for the tests of every crate.

use std::path::{Path, PathBuf};

/// The package folder of the running test: cargo's run-time `CARGO_MANIFEST_DIR`, which is
/// right even when the binary was built from a checkout elsewhere that shares the target
/// directory; the compile-time value otherwise.
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The shared folder: `$PNEUMOSCOPE_SHARED` (set by `cargo xtask test`, which fails when it is
/// missing), else a `shared/` beside the workspace; `None`, with a message, when there is none.
pub fn shared() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PNEUMOSCOPE_SHARED") {
        let p = PathBuf::from(p);
        assert!(
            p.join("data").is_dir(),
            "PNEUMOSCOPE_SHARED={} has no data/",
            p.display()
        );
        return Some(p);
    }
    let here = manifest_dir();
    match here
        .ancestors()
        .map(|a| a.join("shared"))
        .find(|s| s.join("data").is_dir())
    {
        Some(p) => Some(p.canonicalize().unwrap()),
        None => {
            eprintln!("SKIPPED: no shared/ folder beside the workspace (run `cargo xtask test`)");
            None
        }
    }
}

/// The test-only Python (`$PNEUMOSCOPE_PYTHON`, set by `cargo xtask test`, else the default
/// venv); `None` outside `cargo xtask test` when there is none.
pub fn test_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PNEUMOSCOPE_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let home = PathBuf::from(std::env::var_os("HOME")?);
    let p = home.join(".cache/pneumoscope/venv/bin/python");
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var_os("PNEUMOSCOPE_SHARED").is_none(),
        "no test venv: cargo xtask test must set PNEUMOSCOPE_PYTHON"
    );
    eprintln!("SKIPPED: no test venv (run `cargo xtask test`)");
    None
}

/// The workspace root (the folder with `web/models/index.json`).
pub fn workspace_dir() -> PathBuf {
    manifest_dir()
        .ancestors()
        .find(|a| a.join("web/models/index.json").is_file())
        .expect("web/models/index.json in the workspace")
        .to_path_buf()
}

/// Runs a test-only Python script (`script` relative to the workspace root) with path
/// arguments; asserts success and returns its standard output.
pub fn run_script(python: &Path, script: &str, args: &[&Path]) -> String {
    let o = std::process::Command::new(python)
        .arg(workspace_dir().join(script))
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        o.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The files of a folder, sorted by path.
pub fn sorted_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// The shipped default model file, from `web/models/index.json` of the workspace.
pub fn default_model() -> PathBuf {
    let dir = workspace_dir().join("web/models");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    dir.join(index["default"].as_str().unwrap())
}

/// The largest absolute value of a series.
pub fn max_abs(v: &[f32]) -> f32 {
    v.iter().map(|x| x.abs()).fold(0f32, f32::max)
}

/// The largest absolute difference of two equally long series.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "series of different lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// Pearson correlation of two maps (or any two equally long series).
pub fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let ma = a.iter().map(|&v| v as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&v| v as f64).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64 - ma, y as f64 - mb);
        sab += x * y;
        saa += x * x;
        sbb += y * y;
    }
    sab / (saa * sbb).sqrt()
}
