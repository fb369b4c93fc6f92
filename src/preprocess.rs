//! Image decoding and the evaluation transform. The CLI, the trainer and the browser all call
//! these functions, so an image gives the same tensor everywhere.
//!
//! The chest X-ray transform is: decode (with size limits, EXIF orientation applied) → grey
//! levels (colour carries no diagnostic signal in a radiograph but does carry the source of a
//! figure cut from a paper, a known shortcut) → resize the shorter side to `resize` → centre
//! square (the *cached form* the trainer keeps) → centre crop `crop` → three identical channels
//! scaled to [0, 1] and normalised with the architecture's mean/std.

use crate::arch::InputConfig;
use crate::error::{Error, Result};
use image::imageops::FilterType;
use image::{DynamicImage, GrayImage, ImageDecoder, ImageReader, Limits};
use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// The part of the image a network is given (the trainer's `--input`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputRegion {
    /// The whole image, through the transform above.
    #[default]
    Whole,
    /// Lung-focused input: the lungs' bounding box and a margin
    /// ([`crate::lungs::LungMask::crop_rect`]), found by the lung segmenter on the whole image
    /// and cut from it at full size before the same transform; the whole image when the
    /// segmenter finds no lung.
    Lungs,
}

impl InputRegion {
    /// Whether this is the whole image (the default, left out of model files).
    pub fn is_whole(&self) -> bool {
        *self == InputRegion::Whole
    }
}

impl std::fmt::Display for InputRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InputRegion::Whole => "whole",
            InputRegion::Lungs => "lungs",
        })
    }
}

impl std::str::FromStr for InputRegion {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "whole" => Ok(InputRegion::Whole),
            "lungs" => Ok(InputRegion::Lungs),
            other => Err(Error::Invalid(format!(
                "unknown input region {other:?} (expected whole or lungs)"
            ))),
        }
    }
}

/// The part `rect` of an image (the lung crop of lung-focused input).
pub fn crop(img: &DynamicImage, rect: crate::lungs::Rect) -> DynamicImage {
    img.crop_imm(rect.x, rect.y, rect.width, rect.height)
}

/// Largest accepted width or height, in pixels (decompression-bomb guard).
pub const MAX_SIDE: u32 = 16_384;
/// Largest allocation the decoder may make, in bytes.
pub const MAX_ALLOC: u64 = 1 << 30;
/// Smallest accepted width or height, in pixels.
pub const MIN_SIDE: u32 = 32;

/// Decodes an image (PNG, JPEG or DICOM) from bytes with size limits, applying EXIF
/// orientation.
pub fn decode(bytes: &[u8]) -> Result<DynamicImage> {
    if bytes.is_empty() {
        return Err(Error::Decode("the file is empty".into()));
    }
    if crate::dicom::is_dicom(bytes) {
        return check_size(crate::dicom::decode(bytes, MAX_SIDE)?);
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Decode(e.to_string()))?;
    match reader.format() {
        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg) => {}
        Some(other) => {
            return Err(Error::Decode(format!(
                "unsupported image format {other:?} (expected PNG, JPEG or DICOM)"
            )));
        }
        None => {
            return Err(Error::Decode(
                "not a supported image format (expected PNG, JPEG or DICOM)".into(),
            ));
        }
    }
    if reader.format() == Some(image::ImageFormat::Jpeg) && !jpeg_has_end(bytes) {
        return Err(Error::Decode(
            "corrupt or truncated image data (the JPEG has no end-of-image marker)".into(),
        ));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    let mut reader = reader;
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(image_err)?;
    let orientation = decoder.orientation().map_err(image_err)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(image_err)?;
    img.apply_orientation(orientation);
    check_size(img)
}

fn check_size(img: DynamicImage) -> Result<DynamicImage> {
    let (w, h) = (img.width(), img.height());
    if w < MIN_SIDE || h < MIN_SIDE {
        return Err(Error::Decode(format!(
            "the image is {w}x{h} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed"
        )));
    }
    Ok(img)
}

/// Whether a JPEG ends with its end-of-image marker (allowing a little trailing padding). The
/// decoder itself fills a truncated scan with grey instead of failing.
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

fn image_err(e: image::ImageError) -> Error {
    use image::ImageError as E;
    Error::Decode(match e {
        E::Limits(l) => format!(
            "the image exceeds the decoding limits ({l}; at most {MAX_SIDE}x{MAX_SIDE} pixels)"
        ),
        E::Decoding(d) => format!("corrupt or truncated image data ({d})"),
        E::Unsupported(u) => format!("unsupported image ({u})"),
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "corrupt or truncated image data (unexpected end of file)".into()
        }
        other => other.to_string(),
    })
}

/// The cached form: grey levels, shorter side resized to `side`, centre `side`x`side` square.
pub fn to_square_gray(img: &DynamicImage, side: usize) -> GrayImage {
    let gray = img.to_luma8();
    let (w, h) = gray.dimensions();
    let side32 = side as u32;
    let (nw, nh) = if w <= h {
        (
            side32,
            ((h as f64 * side as f64 / w as f64).round() as u32).max(side32),
        )
    } else {
        (
            ((w as f64 * side as f64 / h as f64).round() as u32).max(side32),
            side32,
        )
    };
    let resized = image::imageops::resize(&gray, nw, nh, FilterType::Triangle);
    let x = (nw - side32) / 2;
    let y = (nh - side32) / 2;
    image::imageops::crop_imm(&resized, x, y, side32, side32).to_image()
}

/// Centre-crops `input.crop` from a grey square and normalises it to a `[3, crop, crop]`
/// CHW float vector.
pub fn normalize_gray(square: &GrayImage, input: &InputConfig) -> Vec<f32> {
    let (w, h) = square.dimensions();
    let c = input.crop as u32;
    let x0 = (w.saturating_sub(c)) / 2;
    let y0 = (h.saturating_sub(c)) / 2;
    let n = input.crop * input.crop;
    let mut out = vec![0f32; 3 * n];
    for y in 0..c {
        for x in 0..c {
            let v = square.get_pixel(x0 + x, y0 + y).0[0] as f32 / 255.0;
            let i = (y * c + x) as usize;
            for ch in 0..3 {
                out[ch * n + i] = (v - input.mean[ch]) / input.std[ch];
            }
        }
    }
    out
}

/// The grey `crop`x`crop` view the network sees (before normalisation), for display.
pub fn eval_view(img: &DynamicImage, input: &InputConfig) -> GrayImage {
    let sq = to_square_gray(img, input.resize);
    let c = input.crop as u32;
    let x0 = (sq.width().saturating_sub(c)) / 2;
    let y0 = (sq.height().saturating_sub(c)) / 2;
    image::imageops::crop_imm(&sq, x0, y0, c, c).to_image()
}

/// Decodes and applies the evaluation transform: `[3, crop, crop]` floats.
pub fn preprocess(bytes: &[u8], input: &InputConfig) -> Result<Vec<f32>> {
    let img = decode(bytes)?;
    Ok(normalize_gray(&to_square_gray(&img, input.resize), input))
}

/// The ImageNet reference transform of the published weights: RGB, resize to `size`x`size`
/// (bicubic), scale to [0, 1], normalise. Used only to check a port on photographs.
pub fn preprocess_imagenet(
    img: &DynamicImage,
    size: usize,
    mean: [f32; 3],
    std: [f32; 3],
) -> Vec<f32> {
    let rgb = img.to_rgb8();
    let s = size as u32;
    let resized = image::imageops::resize(&rgb, s, s, FilterType::CatmullRom);
    let n = size * size;
    let mut out = vec![0f32; 3 * n];
    for (x, y, p) in resized.enumerate_pixels() {
        let i = (y * s + x) as usize;
        for ch in 0..3 {
            out[ch * n + i] = (p.0[ch] as f32 / 255.0 - mean[ch]) / std[ch];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = GrayImage::from_fn(w, h, |x, y| image::Luma([((x + y) % 256) as u8]));
        let mut buf = Vec::new();
        DynamicImage::ImageLuma8(img)
            .write_to(&mut Cursor::new(&mut buf), image::ImageFormat::Png)
            .unwrap();
        buf
    }

    #[test]
    fn square_and_crop_have_the_configured_sizes() {
        let input = InputConfig {
            resize: 256,
            crop: 224,
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        let img = decode(&png(300, 500)).unwrap();
        let sq = to_square_gray(&img, 256);
        assert_eq!(sq.dimensions(), (256, 256));
        let t = normalize_gray(&sq, &input);
        assert_eq!(t.len(), 3 * 224 * 224);
        assert!(t.iter().all(|v| (-1.0..=1.0).contains(v)));
    }

    #[test]
    fn bad_inputs_get_clear_errors() {
        assert!(decode(&[]).unwrap_err().to_string().contains("empty"));
        assert!(
            decode(b"hello, I am text")
                .unwrap_err()
                .to_string()
                .contains("not a supported")
        );
        let full = png(64, 64);
        let err = decode(&full[..full.len() / 2]).unwrap_err().to_string();
        assert!(err.contains("cannot read image"), "{err}");
        assert!(
            decode(&png(8, 8))
                .unwrap_err()
                .to_string()
                .contains("at least")
        );
        let mut jpeg = Vec::new();
        DynamicImage::ImageLuma8(GrayImage::from_fn(300, 300, |x, y| {
            image::Luma([(x ^ y) as u8])
        }))
        .write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .unwrap();
        assert!(decode(&jpeg).is_ok());
        let err = decode(&jpeg[..jpeg.len() / 2]).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
    }
}
