//! DICOM chest radiographs, read with the dicom-rs crates (`dicom-object`, `dicom-pixeldata`)
//! natively and in the browser.
//!
//! What is handled, by the library: MONOCHROME1 (inverted to MONOCHROME2) and MONOCHROME2,
//! RGB; 8 to 16 bits stored; the modality LUT (rescale slope and intercept); the first VOI LUT
//! of the file, or its first window centre/width, else a min-max normalisation. Transfer
//! syntaxes: the uncompressed ones (implicit and explicit VR, little and big endian), deflated,
//! RLE lossless and JPEG baseline/extended/lossless (pure-Rust decoders). JPEG 2000, JPEG-LS and
//! JPEG XL files get a clear "unsupported transfer syntax" error. Multi-frame files: the first
//! frame.

use crate::error::{Error, Result};
use dicom_object::OpenFileOptions;
use dicom_object::file::ReadPreamble;
use dicom_pixeldata::{ConvertOptions, PixelDecoder, VoiLutOption};
use image::DynamicImage;

/// Whether bytes are a DICOM Part 10 file (`DICM` after the 128-byte preamble).
pub fn is_dicom(bytes: &[u8]) -> bool {
    bytes.len() >= 132 && &bytes[128..132] == b"DICM"
}

/// Decodes the first frame of a DICOM file to grey levels (8 bits), with the modality and VOI
/// transforms applied. `max_side` bounds the accepted rows and columns.
pub fn decode(bytes: &[u8], max_side: u32) -> Result<DynamicImage> {
    let bad = |m: String| Error::Image(format!("DICOM: {m}"));
    let obj = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .from_reader(bytes)
        .map_err(|e| bad(format!("unreadable file ({e})")))?;
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    let dim = |tag| {
        obj.element(tag)
            .ok()
            .and_then(|e| e.to_int::<u32>().ok())
            .unwrap_or(0)
    };
    let (rows, cols) = (
        dim(dicom_dictionary_std::tags::ROWS),
        dim(dicom_dictionary_std::tags::COLUMNS),
    );
    if rows == 0 || cols == 0 {
        return Err(bad("no image in the file (Rows/Columns missing)".into()));
    }
    if rows > max_side || cols > max_side {
        return Err(bad(format!(
            "the image is {cols}x{rows} pixels, more than the limit of {max_side}x{max_side}"
        )));
    }
    let pixels = obj.decode_pixel_data().map_err(|e| {
        let msg = e.to_string();
        if msg.to_lowercase().contains("unsupported") || msg.contains("not supported") {
            bad(format!("unsupported transfer syntax {ts} ({msg})"))
        } else {
            bad(format!("cannot decode the pixel data ({msg})"))
        }
    })?;
    let options = ConvertOptions::new()
        .with_voi_lut(VoiLutOption::First)
        .force_8bit();
    let img = pixels
        .to_dynamic_image_with_options(0, &options)
        .map_err(|e| bad(format!("cannot convert the pixel data ({e})")))?;
    Ok(img)
}
