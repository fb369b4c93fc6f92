//! Replays the kept fuzz corpora (`fuzz/corpus/TARGET/`, seeds plus what `cargo fuzz` found
//! worth keeping) and any crash reproducers kept in `fuzz/regressions/TARGET/` through the
//! fuzz targets' own bodies ([`pneumoscope::fuzzing`]), so every input that once exercised a
//! new path, or once crashed, is run by the ordinary test suite on stable Rust.

mod common;

fn replay(target: &str, run: fn(&[u8]), min_seeds: usize) {
    let root = common::manifest_dir().join("fuzz");
    let mut n = 0;
    for dir in [
        root.join("corpus").join(target),
        root.join("regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(
                outcome.is_ok(),
                "{}: the {target} target panics",
                f.display()
            );
            n += 1;
        }
    }
    eprintln!("{target}: {n} inputs replayed");
    assert!(n >= min_seeds, "{target}: only {n} inputs kept");
}

#[test]
fn image_corpus_replays_without_a_panic() {
    replay("image", pneumoscope::fuzzing::image, 10);
}

#[test]
fn dicom_corpus_replays_without_a_panic() {
    replay("dicom", pneumoscope::fuzzing::dicom, 6);
}

#[test]
fn model_file_corpus_replays_without_a_panic() {
    replay("model_file", pneumoscope::fuzzing::model_file, 2);
}
