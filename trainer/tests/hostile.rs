//! Hostile and odd input files through the CLI and the dataset builder. The corpus is generated
//! from a real chest X-ray by `tests/hostile/make_corpus.py` (test-only venv): empty, truncated,
//! corrupt, text and random bytes with image extensions, unsupported formats, decompression
//! bombs, too small and too large images (each must fail with a clear message naming the file,
//! without a panic and with bounded memory), and 16-bit, palette, alpha, CMYK, progressive,
//! EXIF-rotated, very large and very small images and wrong extensions (each must be answered,
//! with the plain image's class where the picture is the same).

mod common;
use common::{bin, default_model, read_csv, shared, test_python};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

struct Case {
    file: String,
    kind: String,
    expect: String,
    reason: String,
}

/// `pneumoscope predict --model MODEL FILES…`: its exit status, stdout and stderr.
fn predict_all<F: AsRef<std::ffi::OsStr>>(
    model: &Path,
    files: &[F],
) -> (std::process::ExitStatus, String, String) {
    let out = bin()
        .arg("predict")
        .arg("--model")
        .arg(model)
        .args(files)
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The JSON lines of a `predict` output, by their `file`.
fn answers_by_file(stdout: &str) -> HashMap<String, Value> {
    stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["file"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

fn corpus(python: &Path, source: &Path, out: &Path) -> Vec<Case> {
    common::run_script(python, "tests/hostile/make_corpus.py", &[source, out]);
    let cases: Vec<Value> =
        serde_json::from_slice(&std::fs::read(out.join("expected.json")).unwrap()).unwrap();
    let s = |c: &Value, k: &str| c[k].as_str().unwrap_or_default().to_string();
    cases
        .iter()
        .map(|c| Case {
            file: s(c, "file"),
            kind: s(c, "kind"),
            expect: s(c, "expect"),
            reason: s(c, "reason"),
        })
        .collect()
}

/// The largest resident set of any child process so far, in bytes.
fn children_max_rss() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into the struct it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0);
    usage.ru_maxrss as u64 * 1024
}

fn source_image(shared: &Path) -> PathBuf {
    common::sorted_files(&shared.join("data/kermany/chest_xray/test/PNEUMONIA"))
        .into_iter()
        .find(|p| p.to_string_lossy().contains("bacteria"))
        .expect("a bacterial pneumonia image")
}

#[test]
fn the_cli_answers_odd_files_and_refuses_broken_ones_by_name() {
    let Some(shared) = shared() else { return };
    let Some(python) = test_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cases = corpus(&python, &source_image(&shared), dir.path());
    assert!(cases.iter().filter(|c| c.kind == "broken").count() >= 12);
    assert!(cases.iter().filter(|c| c.kind == "odd").count() >= 12);

    let model = default_model();
    let files: Vec<PathBuf> = cases.iter().map(|c| dir.path().join(&c.file)).collect();
    let (status, stdout, stderr) = predict_all(&model, &files);
    eprintln!("--- stdout\n{stdout}--- stderr\n{stderr}");
    assert!(!status.success(), "broken files must give a non-zero exit");
    assert!(!stderr.contains("panicked"), "a panic: {stderr}");
    let answers = answers_by_file(&stdout);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    let plain = &answers[&dir.path().join("plain.png").display().to_string()];
    for (case, file) in cases.iter().zip(&files) {
        let name = file.display().to_string();
        match case.expect.as_str() {
            "error" => {
                assert!(!answers.contains_key(&name), "{}: answered", case.file);
                let line = errors
                    .iter()
                    .find(|l| l.starts_with(&format!("error: {name}: ")))
                    .unwrap_or_else(|| panic!("{}: no error line naming it", case.file));
                assert!(
                    line.to_lowercase().contains(&case.reason.to_lowercase()),
                    "{}: the message does not say '{}': {line}",
                    case.file,
                    case.reason
                );
            }
            "same" | "result" => {
                let a = answers
                    .get(&name)
                    .unwrap_or_else(|| panic!("{}: no answer", case.file));
                if case.expect == "same" {
                    assert_eq!(a["top"], plain["top"], "{}: another class", case.file);
                }
            }
            other => panic!("unknown expectation {other}"),
        }
    }
    // Lossless re-encodings of the same grey levels give the same probabilities.
    for f in [
        "png-named.jpg",
        "gray16.png",
        "palette.png",
        "rgba.png",
        "gray-alpha.png",
    ] {
        let a = &answers[&dir.path().join(f).display().to_string()];
        for (k, p) in plain["probabilities"].as_object().unwrap() {
            let d = (a["probabilities"][k].as_f64().unwrap() - p.as_f64().unwrap()).abs();
            assert!(d < 1e-5, "{f}: p({k}) differs by {d}");
        }
    }
    assert_eq!(
        errors.len(),
        cases.iter().filter(|c| c.expect == "error").count() + 1,
        "one line per broken file and a summary"
    );
    // Decode limits keep memory bounded: a 100000 x 100000 PNG would need 10 GB.
    let rss = children_max_rss();
    eprintln!("largest child resident set: {} MB", rss >> 20);
    assert!(rss < 1 << 30, "a child used {} MB", rss >> 20);
}

#[test]
fn the_dataset_builder_rejects_broken_files_by_name_and_keeps_the_rest() {
    let Some(shared) = shared() else { return };
    let Some(python) = test_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("folder");
    let class_dir = folder.join("bacterial");
    let cases = corpus(&python, &source_image(&shared), &class_dir);
    std::fs::remove_file(class_dir.join("expected.json")).unwrap();
    let out = dir.path().join("out");
    common::ok(&[
        "data",
        "build",
        "--folder",
        folder.to_str().unwrap(),
        "--val",
        "0",
        "--test",
        "0",
        "--out",
        out.to_str().unwrap(),
    ]);
    let rows = read_csv(&out.join("manifest.csv"));
    let rejected = read_csv(&out.join("rejected.csv"));
    for case in &cases {
        let in_manifest = rows.iter().any(|r| r["path"].ends_with(&case.file));
        let why = rejected
            .iter()
            .find(|r| r["path"].ends_with(&case.file))
            .map(|r| r["reason"].clone());
        if case.expect == "error" {
            let why = why.unwrap_or_else(|| panic!("{} not rejected", case.file));
            assert!(!in_manifest && !why.is_empty(), "{}: {why}", case.file);
        } else {
            assert!(in_manifest, "{} not in the manifest: {why:?}", case.file);
        }
    }
}

/// The model file as a hex editor sees it. One digit of the input normalisation or of the
/// out-of-distribution threshold changed in the header is refused by name before the header is
/// used. A file of the earlier, unsealed format still answers, with the same numbers and a
/// warning that its header was not verified, until `pneumoscope upgrade` rewrites it sealed.
#[test]
fn a_changed_header_is_refused_and_an_earlier_format_is_named_until_upgraded() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = common::workspace_dir().join("web/models/efficientnet_lite0-adults-v2.pneumoscope");
    let bytes = std::fs::read(&model).unwrap();
    let image = source_image(&shared);
    let predict = |m: &Path| {
        bin()
            .arg("predict")
            .arg("--model")
            .arg(m)
            .arg(&image)
            .output()
            .unwrap()
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let shipped = predict(&model);
    assert!(shipped.status.success(), "{}", text(&shipped.stderr));
    assert!(
        !text(&shipped.stderr).contains("not verified"),
        "a sealed file is verified: {}",
        text(&shipped.stderr)
    );

    // One digit of the header changed, as in a hex editor: mean 0.5 → 0.9, and the first
    // digit of the out-of-distribution threshold.
    let (start, hlen) = common::header_span(&bytes);
    let header = std::str::from_utf8(&bytes[start..start + hlen]).unwrap();
    let mean = header.find("\"mean\"").unwrap()
        + header[header.find("\"mean\"").unwrap()..]
            .find("0.5")
            .unwrap();
    let threshold = header
        .find("\"threshold\"")
        .expect("the light model has an OOD threshold");
    let digit = threshold
        + header[threshold..]
            .find(|c: char| c.is_ascii_digit())
            .unwrap();
    for (what, at, to) in [("mean", mean + 2, b'9'), ("threshold", digit, b'9')] {
        let mut changed = bytes.clone();
        assert_ne!(changed[start + at], to, "{what}: the digit is already {to}");
        changed[start + at] = to;
        let path = dir.path().join(format!("{what}.pneumoscope"));
        std::fs::write(&path, &changed).unwrap();
        let out = predict(&path);
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success(),
            "{what}: a changed header was accepted"
        );
        assert!(
            stderr.contains(&path.display().to_string())
                && stderr.contains("header checksum mismatch"),
            "{what}: the error names neither the file nor the header: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{what}: answered anyway");
    }

    // The same file in the earlier format: version 1, no seal.
    let legacy_json = header.replacen("\"format_version\": 4", "\"format_version\": 1", 1);
    assert_ne!(legacy_json, header, "the header names its format version");
    let mut legacy = bytes[..12].to_vec();
    legacy.extend_from_slice(&1u32.to_le_bytes());
    legacy.extend_from_slice(&(legacy_json.len() as u32).to_le_bytes());
    legacy.extend_from_slice(legacy_json.as_bytes());
    legacy.extend_from_slice(&bytes[start + hlen..]);
    let old = dir.path().join("legacy.pneumoscope");
    std::fs::write(&old, &legacy).unwrap();
    let out = predict(&old);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: {}: header not verified (format v1",
            old.display()
        )),
        "no notice for the earlier format: {stderr}"
    );
    let answer = |o: &std::process::Output| {
        let mut v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v.as_object_mut().unwrap().remove("file");
        v
    };
    assert_eq!(
        answer(&out),
        answer(&shipped),
        "the earlier format answers otherwise"
    );

    let new = dir.path().join("upgraded.pneumoscope");
    let said = common::ok(&[
        "upgrade",
        old.to_str().unwrap(),
        "--out",
        new.to_str().unwrap(),
    ]);
    assert!(said.contains("format v1 → v4"), "{said}");
    assert_eq!(
        std::fs::read(&new).unwrap(),
        bytes,
        "the upgrade is the shipped file"
    );
    let out = predict(&new);
    assert!(
        !text(&out.stderr).contains("not verified"),
        "{}",
        text(&out.stderr)
    );
}

/// Files pydicom decodes that are refused on purpose, with the words of the refusal.
const REFUSED_ON_PURPOSE: &[(&str, &str)] = &[
    ("liver_1frame.dcm", "1-bit pixel data are not read"),
    ("liver_expb_1frame.dcm", "1-bit pixel data are not read"),
    ("SC_rgb_rle_32bit.dcm", "32-bit pixel data are not read"),
    (
        "SC_rgb_rle_32bit_2frame.dcm",
        "32-bit pixel data are not read",
    ),
];

/// The grey level of every pixel (the mean of its samples), on 0..255.
fn grey(img: &image::DynamicImage) -> Vec<f32> {
    let rgb = img.to_rgb32f();
    rgb.pixels()
        .map(|p| (p[0] + p[1] + p[2]) / 3.0 * 255.0)
        .collect()
}

/// pydicom's own test files (`tests/dicom/pydicom_corpus.py` lists them with what pydicom makes
/// of them), a corpus nobody here wrote. Every file pydicom decodes to a 2-D image of at least
/// 32 px is decoded, with the same pixels up to the documented windowing (its first frame;
/// correlation of the grey levels at least 0.99), unless it is on the list of refusals on
/// purpose. Every other file is answered or refused by name with a reason; no panic, and the
/// CLI stays under 1 GiB.
#[test]
fn pydicom_test_files_are_read_as_pydicom_reads_them_or_refused_by_name() {
    let Some(_shared) = shared() else { return };
    let Some(python) = test_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    common::run_script(&python, "tests/dicom/pydicom_corpus.py", &[dir.path()]);
    let corpus: Vec<Value> =
        serde_json::from_slice(&std::fs::read(dir.path().join("corpus.json")).unwrap()).unwrap();
    assert!(corpus.len() >= 70, "only {} files", corpus.len());
    let files: Vec<&str> = corpus.iter().map(|c| c["file"].as_str().unwrap()).collect();

    let model = common::workspace_dir().join("web/models/efficientnet_lite0-adults-v2.pneumoscope");
    let (_, stdout, stderr) = predict_all(&model, &files);
    assert!(!stderr.contains("panicked"), "a panic: {stderr}");
    let answered = answers_by_file(&stdout);
    let refusal = |file: &str| {
        stderr
            .lines()
            .find_map(|l| l.strip_prefix(&format!("error: {file}: ")))
            .map(str::to_string)
    };

    let (mut same, mut on_purpose, mut others, mut differ) =
        (0, Vec::new(), Vec::new(), Vec::new());
    for c in &corpus {
        let (file, name) = (c["file"].as_str().unwrap(), c["name"].as_str().unwrap());
        let (rows, cols) = (
            c["rows"].as_u64().unwrap_or(0),
            c["columns"].as_u64().unwrap_or(0),
        );
        let image = c["pydicom"] == "image" && rows >= 32 && cols >= 32;
        let purpose = REFUSED_ON_PURPOSE.iter().find(|(n, _)| *n == name);
        match (answered.get(file), refusal(file)) {
            (Some(_), None) => {}
            (None, Some(why)) => {
                assert!(!why.trim().is_empty(), "{name}: refused without a reason");
                if let Some((_, words)) = purpose {
                    assert!(
                        why.contains(words),
                        "{name}: refused, but not as planned: {why}"
                    );
                    on_purpose.push(format!("{name}: {why}"));
                } else {
                    assert!(
                        !image,
                        "{name}: pydicom decodes it, the CLI refuses it: {why}"
                    );
                    others.push(format!("{name} ({}): {why}", c["pydicom"]));
                }
                continue;
            }
            (a, r) => panic!("{name}: answered {} and refused {r:?}", a.is_some()),
        }
        assert!(
            purpose.is_none(),
            "{name}: on the list of refusals, but answered"
        );
        if !image {
            others.push(format!("{name} ({}): answered", c["pydicom"]));
            continue;
        }
        // The same pixels as pydicom's, up to the windowing.
        let bytes = std::fs::read(file).unwrap();
        let ours = pneumoscope::preprocess::decode(&bytes).unwrap();
        assert_eq!(
            (ours.width() as u64, ours.height() as u64),
            (cols, rows),
            "{name}: another size"
        );
        let samples = c["samples"].as_u64().unwrap() as usize;
        let raw = std::fs::read(dir.path().join(c["reference"].as_str().unwrap())).unwrap();
        let reference: Vec<f32> = raw
            .chunks_exact(4 * samples)
            .map(|px| {
                px.chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .sum::<f32>()
                    / samples as f32
            })
            .collect();
        let ours = grey(&ours);
        let r = common::correlation(&ours, &reference);
        eprintln!("{name}: {cols}x{rows}, {samples} samples, r = {r:.5}");
        let range = |v: &[f32]| {
            v.iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)))
        };
        if r >= 0.99 {
            same += 1;
        } else {
            differ.push(format!(
                "{name}: r = {r:.4}; grey levels {:?} here, {:?} in pydicom",
                range(&ours),
                range(&reference)
            ));
        }
    }
    eprintln!("refused on purpose:\n  {}", on_purpose.join("\n  "));
    eprintln!(
        "not an image to pydicom, or smaller than 32 px:\n  {}",
        others.join("\n  ")
    );
    assert!(
        differ.is_empty(),
        "other pixels than pydicom's:\n{}",
        differ.join("\n")
    );
    assert_eq!(on_purpose.len(), REFUSED_ON_PURPOSE.len(), "{on_purpose:?}");
    assert!(
        same >= 35,
        "only {same} files decoded as pydicom decodes them"
    );
    let rss = children_max_rss();
    eprintln!(
        "{same} images as pydicom reads them; largest child resident set: {} MB",
        rss >> 20
    );
    assert!(rss < 1 << 30, "a child used {} MB", rss >> 20);
}
