//! `pneumoscope int8` on the shipped models: the int8 file is written without images, loads and
//! answers; with the page's example images its answers are compared with the original's, and a
//! file whose answers move by 0.01 or more is not written (the shipped default's do, through
//! the lung framing its Lite0 member's encoder shares). A second conversion and a lung
//! segmenter file are refused.

mod common;
use common::*;

fn examples() -> Vec<String> {
    sorted_files(&workspace_dir().join("web/examples"))
        .into_iter()
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("jpg" | "png")))
        .map(|p| p.display().to_string())
        .collect()
}

/// The probabilities `predict` prints for each image, in order.
fn probabilities(model: &str, images: &[String]) -> Vec<Vec<f64>> {
    let mut args = vec!["predict", "--model", model];
    args.extend(images.iter().map(String::as_str));
    ok(&args)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let p = v["probabilities"].as_object().unwrap();
            p.values().map(|x| x.as_f64().unwrap()).collect()
        })
        .collect()
}

#[test]
fn int8_files_load_and_a_failed_check_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let default = default_model();
    let original = default.to_str().unwrap();
    let images = examples();
    assert!(images.len() >= 5, "{images:?}");

    // Without images: written, a little over half of the f16 file, and it answers.
    let out = dir.path().join("int8.pneumoscope");
    let said = ok(&["int8", original, "--out", out.to_str().unwrap()]);
    assert!(said.contains("wrote"), "{said}");
    let (before, after) = (
        std::fs::metadata(&default).unwrap().len(),
        std::fs::metadata(&out).unwrap().len(),
    );
    assert!(after * 10 < before * 6, "{after} of {before} bytes");
    // Every network's own header (an ensemble's members carry theirs) says int8.
    let dtypes = |bytes: &[u8]| -> Vec<String> {
        let key = b"\"weights_dtype\"";
        (0..bytes.len().saturating_sub(key.len()))
            .filter(|&i| &bytes[i..i + key.len()] == key)
            .map(|i| {
                let rest = String::from_utf8_lossy(&bytes[i + key.len()..i + key.len() + 12]);
                rest.split('"').nth(1).unwrap_or_default().to_string()
            })
            .collect()
    };
    // The networks' f16 weights became int8; the lung segmenter's decoder keeps its f16.
    let (was, now) = (
        dtypes(&std::fs::read(&default).unwrap()),
        dtypes(&std::fs::read(&out).unwrap()),
    );
    assert_eq!(was.len(), now.len());
    let int8 = now.iter().filter(|d| *d == "i8").count();
    assert!(int8 >= 1, "{now:?}");
    assert_eq!(
        int8 + now.iter().filter(|d| *d == "f16").count(),
        was.len(),
        "{was:?} → {now:?}"
    );
    let header = header_json(&std::fs::read(&out).unwrap());
    let lungs = usize::from(!header["lungs"].is_null());
    assert_eq!(now.len() - int8, lungs, "{now:?}");
    let (p, q) = (
        probabilities(original, &images),
        probabilities(out.to_str().unwrap(), &images),
    );
    assert_eq!(p.len(), images.len());
    let mut largest = 0f64;
    for (a, b) in p.iter().zip(&q) {
        assert!((b.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{b:?}");
        largest = a
            .iter()
            .zip(b)
            .fold(largest, |m, (x, y)| m.max((x - y).abs()));
    }
    eprintln!("largest probability change on the examples: {largest:.4}");
    assert!(largest > 0.0, "the weights were rounded");

    // With the examples: the check measures the same change and refuses to write.
    let checked = dir.path().join("checked.pneumoscope");
    let mut args = vec![
        "int8",
        original,
        "--out",
        checked.to_str().unwrap(),
        "--check",
    ];
    args.extend(images.iter().map(String::as_str));
    let o = run(&args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        stdout.contains(&format!("{} images", images.len())),
        "{stdout}"
    );
    if largest >= 0.01 {
        assert!(!o.status.success());
        assert!(
            stderr.contains("too far") && stderr.contains("not written"),
            "{stderr}"
        );
        assert!(!checked.exists(), "nothing written");
    } else {
        assert!(o.status.success(), "{stderr}");
        assert!(checked.exists());
    }

    // A second conversion, and a lung segmenter file.
    let again = run(&["int8", out.to_str().unwrap(), "--out", "/dev/null"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("int8 already"));
    let lungs = workspace_dir().join("web/models/lungs-v1.pneumoscope");
    let refused = run(&["int8", lungs.to_str().unwrap(), "--out", "/dev/null"]);
    assert!(!refused.status.success());
    let e = String::from_utf8_lossy(&refused.stderr);
    assert!(
        e.contains("lungs-v1.pneumoscope") && e.contains("lung segmenter"),
        "{e}"
    );
}
