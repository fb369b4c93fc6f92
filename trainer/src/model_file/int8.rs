//! `pneumoscope int8`: a model file (one network or an ensemble) rewritten with int8 weights
//! and a scale per output channel ([`pneumoscope::int8`]), and, on images given, how far the
//! answers moved from the original file's.

use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::Device;
use pneumoscope::inference::Engine;
use pneumoscope::model_file::{EnsembleFile, FileKind, ModelFile, format_of};
use std::path::{Path, PathBuf};

/// The largest change of any probability the check accepts (exclusive).
pub const MAX_PROBABILITY_CHANGE: f32 = 0.01;

/// What the conversion wrote and, when images were given, how far the answers moved.
#[derive(Debug)]
pub struct Int8Report {
    /// Bytes of the file read.
    pub bytes_before: usize,
    /// Bytes of the file written.
    pub bytes_after: usize,
    /// Images compared.
    pub images: usize,
    /// The largest change of a class probability, and the image it happened on.
    pub largest_change: Option<(f32, PathBuf)>,
    /// Images whose most probable class changed.
    pub top_changed: Vec<PathBuf>,
}

impl Int8Report {
    /// Whether every probability moved by less than [`MAX_PROBABILITY_CHANGE`] and no top
    /// class changed.
    pub fn passes(&self) -> bool {
        self.top_changed.is_empty()
            && self
                .largest_change
                .as_ref()
                .is_none_or(|(d, _)| *d < MAX_PROBABILITY_CHANGE)
    }
}

/// Reads `input`, compares its int8 form's answers with the original's on `images` (image by
/// image) and writes the int8 form to `out` when it passes ([`Int8Report::passes`]; always
/// without images). Nothing is written when it does not.
pub fn convert(
    input: &Path,
    out: &Path,
    images: &[PathBuf],
    device: &Device,
) -> Result<Int8Report> {
    let bytes = std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
    let named = |e: pneumoscope::Error| anyhow!("{}: {e}", input.display());
    let written = match format_of(&bytes).map_err(named)?.kind {
        FileKind::Network => ModelFile::from_bytes(&bytes)
            .and_then(ModelFile::to_int8)
            .map_err(named)?
            .to_bytes(),
        FileKind::Ensemble => EnsembleFile::from_bytes(&bytes)
            .and_then(EnsembleFile::to_int8)
            .map_err(named)?
            .to_bytes(),
        FileKind::LungSegmenter => bail!(
            "{}: a lung segmenter file; int8 weights are for classifiers",
            input.display()
        ),
    };
    let mut report = Int8Report {
        bytes_before: bytes.len(),
        bytes_after: written.len(),
        images: 0,
        largest_change: None,
        top_changed: Vec::new(),
    };
    if !images.is_empty() {
        let before = Engine::load(&bytes, device.clone()).map_err(named)?;
        let after = Engine::load(&written, device.clone())
            .map_err(|e| anyhow!("the int8 form of {}: {e}", input.display()))?;
        for img in images {
            let b = std::fs::read(img).with_context(|| format!("cannot read {}", img.display()))?;
            let answer = |e: &Engine| {
                e.classify(&b)
                    .map_err(|e| anyhow!("{}: {e}", img.display()))
            };
            let (p, q) = (answer(&before)?, answer(&after)?);
            let d = p
                .probabilities
                .iter()
                .zip(&q.probabilities)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            if report.largest_change.as_ref().is_none_or(|(m, _)| d > *m) {
                report.largest_change = Some((d, img.clone()));
            }
            if p.top != q.top {
                report.top_changed.push(img.clone());
            }
            report.images += 1;
        }
    }
    if report.passes() {
        crate::machinery::fsutil::write_atomic(out, &written)?;
    }
    Ok(report)
}
