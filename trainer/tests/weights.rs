//! `pneumoscope weights fetch` against a file server on 127.0.0.1 serving the real Lite0 weights
//! from the shared folder: a clean download, a cache hit, a corrupt file (wrong hash), a
//! download cut off half-way and resumed with a range request, a 404, and `--weights-dir`.
//! Then training without weights: refused, unless `--allow-random-init`, and then marked.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

const FILE: &str = "efficientnet-lite0-57934424.pth";

/// A tiny HTTP/1.1 file server. Paths are `/<mode>/<file>`: `good` serves the bytes (with range
/// requests), `corrupt` the bytes with one flipped, `flaky` cuts the first full response off
/// half-way, anything else is a 404. Every request line and its `Range` header are recorded.
struct Server {
    base: String,
    log: Arc<Mutex<Vec<String>>>,
}

fn serve(bytes: Arc<Vec<u8>>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        let mut flaky_cut = false;
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            handle(stream, &bytes, &log2, &mut flaky_cut);
        }
    });
    Server { base, log }
}

fn handle(mut stream: TcpStream, bytes: &[u8], log: &Mutex<Vec<String>>, flaky_cut: &mut bool) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range_start: Option<usize> = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("range: bytes=") {
            range_start = v.trim().trim_end_matches('-').parse().ok();
        }
    }
    log.lock()
        .unwrap()
        .push(format!("{path} range={range_start:?}"));
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (mode, file) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let body: Vec<u8> = match (mode, file) {
        ("good" | "flaky", FILE) => bytes.to_vec(),
        ("corrupt", FILE) => {
            let mut b = bytes.to_vec();
            b[1000] ^= 0xff;
            b
        }
        _ => {
            let _ = stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
            );
            return;
        }
    };
    let total = body.len();
    if let Some(start) = range_start {
        let head = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{total}\r\nConnection: close\r\n\r\n",
            total - start,
            total - 1
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&body[start..]);
        return;
    }
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(head.as_bytes());
    if mode == "flaky" && !*flaky_cut {
        *flaky_cut = true;
        let _ = stream.write_all(&body[..total / 2]);
        let _ = stream.flush();
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return;
    }
    let _ = stream.write_all(&body);
}

fn fetch(cache: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "weights",
        "fetch",
        "efficientnet_lite0",
        "--cache",
        cache.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn sha(path: &Path) -> String {
    let mut b = Vec::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_end(&mut b)
        .unwrap();
    pneumoscope::model_file::sha256_hex(&b)
}

#[test]
fn fetch_verifies_resumes_and_reports_errors() {
    let Some(shared) = shared() else { return };
    let real = shared.join("weights").join(FILE);
    let bytes = Arc::new(std::fs::read(&real).unwrap());
    let server = serve(bytes.clone());
    let want = sha(&real);

    // A clean download, then a cache hit without any request.
    let cache = tempfile::tempdir().unwrap();
    let url = format!("{}/good/", server.base);
    let o = fetch(cache.path(), &["--base-url", &url]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("Downloaded { resumed_from: 0 }"));
    assert_eq!(sha(&cache.path().join(FILE)), want);
    let n = server.log.lock().unwrap().len();
    let o = fetch(cache.path(), &["--base-url", &url]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("(Cached)"));
    assert_eq!(
        server.log.lock().unwrap().len(),
        n,
        "a cache hit asks nothing"
    );

    // A file that does not hash to its name: refused, nothing kept.
    let cache = tempfile::tempdir().unwrap();
    let o = fetch(
        cache.path(),
        &["--base-url", &format!("{}/corrupt/", server.base)],
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("does not start with 57934424") && e.contains("the download was removed"),
        "{e}"
    );
    assert!(
        std::fs::read_dir(cache.path()).unwrap().next().is_none(),
        "nothing is left in the cache"
    );

    // Cut off half-way: the partial file is kept; the next run resumes with a range request.
    let cache = tempfile::tempdir().unwrap();
    let flaky = format!("{}/flaky/", server.base);
    let o = fetch(cache.path(), &["--base-url", &flaky]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("interrupted") && e.contains("run the same command again to resume"),
        "{e}"
    );
    let part = cache.path().join(format!("{FILE}.part"));
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept > 0 && kept < bytes.len() as u64, "kept {kept} bytes");
    let o = fetch(cache.path(), &["--base-url", &flaky]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("resumed_from: {kept}")),
        "resumed, not restarted"
    );
    assert!(
        server
            .log
            .lock()
            .unwrap()
            .contains(&format!("/flaky/{FILE} range=Some({kept})"))
    );
    assert_eq!(sha(&cache.path().join(FILE)), want);
    assert!(!part.exists());

    // A 404 names the address and the status.
    let cache = tempfile::tempdir().unwrap();
    let o = fetch(
        cache.path(),
        &["--base-url", &format!("{}/nowhere/", server.base)],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/nowhere/efficientnet-lite0-57934424.pth: HTTP 404 Not Found"));

    // No address known and no mirror: a clear error naming where to get the file.
    let o = fetch(cache.path(), &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no download address is known"));

    // Offline: --weights-dir with the right file copies it; with a wrong one refuses.
    let o = fetch(
        cache.path(),
        &["--weights-dir", shared.join("weights").to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("(Copied)"));
    let wrong = tempfile::tempdir().unwrap();
    let mut b = bytes.to_vec();
    b[0] ^= 1;
    std::fs::write(wrong.path().join(FILE), b).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let o = fetch(
        cache.path(),
        &["--weights-dir", wrong.path().to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("does not start with 57934424"));
}

/// Training without ImageNet weights: refused with directions, or, with --allow-random-init,
/// a run (here SqueezeNet's convolutional head, end to end) whose model file, evaluation and
/// predictions carry the mark.
#[test]
fn training_without_weights_needs_allow_random_init() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let full = build_full(&shared, &dir.path().join("full"));
    let manifest = subset(&full, &dir.path().join("small"), [10, 4, 4]);
    let empty_cache = dir.path().join("weights-cache");
    let run_dir = dir.path().join("run");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "train",
            "--arch",
            "squeezenet1_0",
            "--mode",
            "frozen",
            "--epochs",
            "3",
            "--batch-size",
            "8",
            "--data",
        ]
        .map(String::from)
        .to_vec();
        a.push(manifest.display().to_string());
        a.push("--out".into());
        a.push(run_dir.display().to_string());
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let train = |extra: &[&str]| {
        let a = args(extra);
        bin()
            .args(&a)
            .env("PNEUMOSCOPE_WEIGHTS", &empty_cache)
            .output()
            .unwrap()
    };
    let o = train(&[]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("pneumoscope weights fetch squeezenet1_0")
            && e.contains("--allow-random-init")
            && e.contains("squeezenet1_0-b66bff10.pth"),
        "{e}"
    );
    assert!(!run_dir.exists(), "nothing is written when refused");

    let o = train(&["--allow-random-init"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("random initialisation"));
    check_random_init_marked(&run_dir, &manifest, dir.path());
    // Fine-tuning every layer works for a torchvision port too (one epoch).
    let ft = dir.path().join("run-ft");
    let mut a = args(&["--allow-random-init"]);
    let i = a.iter().position(|x| x == "frozen").unwrap();
    a[i] = "finetune".into();
    let i = a.iter().position(|x| x == "3").unwrap();
    a[i] = "1".into();
    let i = a
        .iter()
        .position(|x| *x == run_dir.display().to_string())
        .unwrap();
    a[i] = ft.display().to_string();
    let o = bin()
        .args(&a)
        .env("PNEUMOSCOPE_WEIGHTS", &empty_cache)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(ft.join("model.bpk").is_file());
    assert_eq!(read_csv(&ft.join("epochs.csv")).len(), 1);
}

/// The model file exported from the random-init run at `run_dir`, its evaluation and its
/// predictions carry the mark, and it answers and explains.
fn check_random_init_marked(run_dir: &Path, manifest: &Path, dir: &Path) {
    let model = dir.join("m.pneumoscope");
    export(run_dir, &model, &[]);
    let header = pneumoscope::model_file::ModelFile::from_bytes(&std::fs::read(&model).unwrap())
        .unwrap()
        .header;
    assert_eq!(header.arch, "squeezenet1_0");
    assert_eq!(header.weight_source, "random-init");
    let report = dir.join("report");
    let eval = ok(&[
        "evaluate",
        "--model",
        model.to_str().unwrap(),
        "--data",
        manifest.to_str().unwrap(),
        "--json",
        "--out",
        report.to_str().unwrap(),
    ]);
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(md.contains("squeezenet1_0 (random-init backbone)"), "{md}");
    let v: serde_json::Value = serde_json::from_str(&eval).unwrap();
    assert_eq!(v["n"], 16);
    assert!(eval.contains("random-init"), "{eval}");
    let img = read_csv(manifest)[0]["path"].clone();
    let img = manifest.parent().unwrap().join(img);
    let line = ok(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    let p: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    let sum: f64 = ["normal", "bacterial", "viral", "covid19"]
        .iter()
        .map(|c| p["probabilities"][c].as_f64().unwrap())
        .sum();
    assert!((sum - 1.0).abs() < 1e-4);
    let png = dir.join("cam.png");
    ok(&[
        "gradcam",
        "--model",
        model.to_str().unwrap(),
        img.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(png.is_file());
}
