//! The out-of-distribution score of the shipped model on real inputs: ImageNet photos and the
//! CT slices of the COVID-19 collection are flagged, chest X-rays of the Kermany test folder are
//! not (the project splits Kermany by patient afresh, so some of these are training images of
//! the model; the held-out figures are in the model card); a model file without statistics
//! answers `ood: None`.

mod common;
use burn::prelude::*;
use pneumoscope::inference::Engine;
use pneumoscope::model_file::{EnsembleFile, FileKind, ModelFile, format_of};
use std::path::{Path, PathBuf};

fn engine() -> Engine {
    Engine::load(
        &std::fs::read(common::default_model()).unwrap(),
        Device::flex(),
    )
    .unwrap()
}

fn flagged(engine: &Engine, files: &[PathBuf]) -> (usize, Vec<f32>) {
    let mut n = 0;
    let mut scores = Vec::new();
    for f in files {
        let p = engine.classify(&std::fs::read(f).unwrap()).unwrap();
        let ood = p.ood.expect("the shipped model has OOD statistics");
        n += ood.flagged as usize;
        scores.push(ood.score);
    }
    (n, scores)
}

/// The CT images of the COVID-19 collection (its metadata's `modality` column).
fn ct_images(shared: &Path) -> Vec<PathBuf> {
    let dir = shared.join("data/covid-chestxray-dataset");
    let mut r = csv::Reader::from_path(dir.join("metadata.csv")).unwrap();
    let h = r.headers().unwrap().clone();
    let col = |n: &str| h.iter().position(|c| c == n).unwrap();
    let (m, f, d) = (col("modality"), col("filename"), col("folder"));
    r.records()
        .filter_map(|row| row.ok())
        .filter(|row| row.get(m) == Some("CT"))
        .map(|row| dir.join(&row[d]).join(&row[f]))
        .filter(|p| p.is_file())
        .collect()
}

#[test]
fn photos_and_ct_slices_are_flagged_and_chest_x_rays_are_not() {
    let Some(shared) = common::shared() else {
        return;
    };
    let engine = engine();
    for net in &engine.networks {
        let stats = net.header.ood.as_ref().unwrap();
        assert_eq!(stats.calibration.threshold_split, "val");
        assert!(stats.calibration.fit_n > 1000);
    }

    let photos: Vec<PathBuf> = ["chelsea.png", "coffee.png"]
        .iter()
        .map(|f| shared.join("fixtures/imagenet").join(f))
        .collect();
    let (n, scores) = flagged(&engine, &photos);
    eprintln!("ImageNet photos: {scores:?}");
    assert_eq!(n, 2, "photos not flagged: {scores:?}");

    let ct = ct_images(&shared);
    assert!(ct.len() >= 20, "only {} CT images found", ct.len());
    let (n, scores) = flagged(&engine, &ct);
    eprintln!("CT: {n} of {} flagged: {scores:?}", ct.len());
    assert!(
        n * 10 >= ct.len() * 9,
        "{n} of {} CT images flagged",
        ct.len()
    );

    let k = shared.join("data/kermany/chest_xray/test");
    let mut xrays = Vec::new();
    for sub in ["NORMAL", "PNEUMONIA"] {
        xrays.extend(
            common::sorted_files(&k.join(sub))
                .into_iter()
                .step_by(7)
                .take(30),
        );
    }
    let (n, scores) = flagged(&engine, &xrays);
    eprintln!("Kermany X-rays: {n} of {} flagged", xrays.len());
    assert!(
        n * 20 <= xrays.len(),
        "{n} of {} X-rays flagged: {scores:?}",
        xrays.len()
    );
}

#[test]
fn a_model_without_statistics_gives_no_score() {
    let Some(shared) = common::shared() else {
        return;
    };
    // The default model with the statistics of every network removed.
    let bytes = std::fs::read(common::default_model()).unwrap();
    let without = if format_of(&bytes).unwrap().kind == FileKind::Ensemble {
        let file = EnsembleFile::from_bytes(&bytes).unwrap();
        let members = file
            .members
            .into_iter()
            .map(|mut m| {
                m.header.ood = None;
                m
            })
            .collect();
        EnsembleFile::new(members, file.header.metrics, file.header.extra)
            .unwrap()
            .to_bytes()
    } else {
        let mut file = ModelFile::from_bytes(&bytes).unwrap();
        file.header.ood = None;
        file.to_bytes()
    };
    let engine = Engine::load(&without, Device::flex()).unwrap();
    let image = std::fs::read(&common::sample_images(&shared)[0]).unwrap();
    let p = engine.classify(&image).unwrap();
    assert!(p.ood.is_none());
    // The same probabilities as with the statistics: the score only reads the features.
    let with = self::engine().classify(&image).unwrap();
    assert_eq!(p.probabilities, with.probabilities);
    assert!(with.ood.is_some());
}
