//! DICOM chest radiographs, read with the dicom-rs crates (`dicom-object`, `dicom-pixeldata`)
//! natively and in the browser.
//!
//! What is handled, by the library: MONOCHROME1 (inverted to MONOCHROME2) and MONOCHROME2,
//! RGB, YBR_FULL and YBR_FULL_422 (converted to RGB), palette colour (its indices); 8 to 16
//! bits allocated; the modality LUT (rescale slope and intercept); the first VOI LUT of the
//! file, or its first window centre/width, else a min-max normalisation. Transfer syntaxes: the
//! uncompressed ones (implicit and explicit VR, little and big endian, and an implicit-VR data
//! set under an explicit transfer syntax, as some exporters write it), deflated, RLE lossless,
//! JPEG baseline/extended/lossless and JPEG 2000 (pure-Rust decoders). JPEG-LS and JPEG XL
//! files get a clear "unsupported transfer syntax" error. Multi-frame files: the first frame.
//! Refused on purpose, with the reason: 1-bit and 32-bit pixel data (segmentations, dose grids
//! and float maps, not radiographs).

use crate::error::{Error, Result};
use dicom_object::file::ReadPreamble;
use dicom_object::{FileMetaTable, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::{
    ConvertOptions, DecodedPixelData, PixelDecoder, PixelRepresentation, VoiLutOption, WindowLevel,
};
use dicom_transfer_syntax_registry::entries;
use image::DynamicImage;

/// Value length meaning "undefined" (delimited by items).
const UNDEFINED: u32 = 0xFFFF_FFFF;

/// Walks the elements of a Part 10 file and checks that none declares a value longer than the
/// bytes that follow it. The parser of dicom-rs 0.10 reserves and zero-fills a value's declared
/// length before reading it, so a few kilobytes declaring 2 GB would take 2 GB of memory (found
/// by fuzzing). Deflated data sets are not walked (their lengths refer to inflated bytes).
///
/// Returns where the data set starts when it is written in implicit VR although the transfer
/// syntax says explicit VR little endian (some exporters do this; pydicom reads such files with
/// a warning, dicom-rs reads the first element's value as a length and loses its place).
fn check_lengths(bytes: &[u8]) -> Checked<Option<usize>> {
    let w = Walker { bytes };
    // File meta group, as dicom-object reads it: (0002,0000) UL 4 gives the group length, then
    // explicit-VR little-endian elements until that many bytes are read.
    if bytes.len() < 144 || (w.u16_at(132, false), w.u16_at(134, false)) != (0x0002, 0x0000) {
        return Ok(None); // the reader refuses it without allocating
    }
    let (pos, ts) = w.meta_group()?;
    let (mut explicit, mut big) = (true, false);
    match ts.trim_end_matches(['\0', ' ']) {
        "1.2.840.10008.1.2" => explicit = false,
        "1.2.840.10008.1.2.2" => big = true,
        "1.2.840.10008.1.2.1.99" => return Ok(None),
        _ => {}
    }
    // An explicit VR is two upper-case letters; anything else where the first element's VR
    // should be means the data set is in implicit VR.
    let mut implicit_at = None;
    if explicit
        && !big
        && pos + 8 <= bytes.len()
        && w.u16_at(pos, false) != 0xFFFE
        && !bytes[pos + 4..pos + 6].iter().all(u8::is_ascii_uppercase)
    {
        explicit = false;
        implicit_at = Some(pos);
    }
    w.data_set(pos, explicit, big)?;
    Ok(implicit_at)
}

/// Reads element headers of a Part 10 file's bytes for [`check_lengths`].
struct Walker<'a> {
    bytes: &'a [u8],
}

impl Walker<'_> {
    fn u16_at(&self, p: usize, big: bool) -> u16 {
        let b = [self.bytes[p], self.bytes[p + 1]];
        if big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32_at(&self, p: usize, big: bool) -> u32 {
        let b = &self.bytes;
        let b = [b[p], b[p + 1], b[p + 2], b[p + 3]];
        if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    fn too_long(&self, what: String, len: u32, pos: usize) -> String {
        format!(
            "{what} declares {len} bytes, only {} remain",
            self.bytes.len() - pos
        )
    }

    /// An explicit-VR header as dicom-encoding reads it: the VRs of PS3.5 table 7.1-2 have a
    /// 2-byte length, every other VR (unknown ones included, read as UN) a 4-byte length.
    /// Returns the VR, the value length and the header's size.
    fn explicit_header(&self, pos: usize, big: bool) -> Option<([u8; 2], u32, usize)> {
        let vr = [self.bytes[pos + 4], self.bytes[pos + 5]];
        let short = matches!(
            &vr,
            b"AE"
                | b"AS"
                | b"AT"
                | b"CS"
                | b"DA"
                | b"DS"
                | b"DT"
                | b"FL"
                | b"FD"
                | b"IS"
                | b"LO"
                | b"LT"
                | b"PN"
                | b"SH"
                | b"SL"
                | b"SS"
                | b"ST"
                | b"TM"
                | b"UI"
                | b"UL"
                | b"US"
        );
        if short {
            Some((vr, self.u16_at(pos + 6, big) as u32, 8))
        } else if pos + 12 <= self.bytes.len() {
            Some((vr, self.u32_at(pos + 8, big), 12))
        } else {
            None
        }
    }

    /// Walks the file meta group; returns where the data set starts and the transfer syntax.
    fn meta_group(&self) -> Checked<(usize, String)> {
        let bytes = self.bytes;
        let group_len = self.u32_at(140, false) as usize;
        let mut pos = 144;
        let mut ts = String::new();
        while pos - 144 < group_len && pos + 8 <= bytes.len() {
            let tag = (self.u16_at(pos, false), self.u16_at(pos + 2, false));
            let Some((_, len, header)) = self.explicit_header(pos, false) else {
                break;
            };
            pos += header;
            if len as usize > bytes.len() - pos {
                return Err(Corrupt(self.too_long(
                    format!("meta element ({:04X},{:04X})", tag.0, tag.1),
                    len,
                    pos,
                )));
            }
            if tag == (0x0002, 0x0010) {
                ts = String::from_utf8_lossy(&bytes[pos..pos + len as usize]).into_owned();
            }
            pos += len as usize;
        }
        Ok((pos, ts))
    }

    /// Walks the data set from `pos`, into sequences and items, checking every value length.
    fn data_set(&self, mut pos: usize, explicit: bool, big: bool) -> Checked<()> {
        let bytes = self.bytes;
        let mut encapsulated = false;
        while pos + 8 <= bytes.len() {
            let (group, element) = (self.u16_at(pos, big), self.u16_at(pos + 2, big));
            if group == 0xFFFE {
                // Item and delimiters: a tag and a 4-byte length, whatever the VR encoding.
                let len = self.u32_at(pos + 4, big);
                pos += 8;
                if element == 0xE000 && len != UNDEFINED {
                    if len as usize > bytes.len() - pos {
                        return Err(Corrupt(self.too_long("an item".into(), len, pos)));
                    }
                    if encapsulated {
                        pos += len as usize; // a compressed fragment: not elements
                    }
                } else if element == 0xE0DD {
                    encapsulated = false;
                }
                continue;
            }
            let (vr, len, header) = if explicit {
                match self.explicit_header(pos, big) {
                    Some((vr, len, header)) => (Some(vr), len, header),
                    None => break,
                }
            } else {
                (None, self.u32_at(pos + 4, big), 8)
            };
            pos += header;
            if len == UNDEFINED {
                // A sequence, or encapsulated pixel data, delimited by items: walk into it.
                encapsulated = vr != Some(*b"SQ") && (group, element) == (0x7FE0, 0x0010);
                continue;
            }
            if len as usize > bytes.len() - pos {
                return Err(Corrupt(self.too_long(
                    format!("element ({group:04X},{element:04X})"),
                    len,
                    pos,
                )));
            }
            check_value_size(vr, len, (group, element))?;
            // Walk into sequences (their items hold elements); skip any other value.
            let sequence = vr == Some(*b"SQ")
                || (vr.is_none() && len >= 8 && self.u32_at(pos, big) == 0xE000_FFFE);
            if !sequence {
                pos += len as usize;
            }
        }
        Ok(())
    }
}

/// A binary value whose length is not a whole number of values: the reader consumes only the
/// whole ones and loses its place in the file (found by fuzzing).
fn check_value_size(vr: Option<[u8; 2]>, len: u32, (group, element): (u16, u16)) -> Checked<()> {
    let size = match vr.as_ref().map(|v| &v[..]) {
        Some(b"SS" | b"US" | b"OW") => 2,
        Some(b"FL" | b"SL" | b"UL" | b"AT" | b"OF" | b"OL") => 4,
        Some(b"FD" | b"SV" | b"UV" | b"OD" | b"OV") => 8,
        _ => 1,
    };
    if !len.is_multiple_of(size) {
        return Err(Corrupt(format!(
            "element ({group:04X},{element:04X}) has {len} bytes, not a multiple of its value size {size}"
        )));
    }
    Ok(())
}

/// One YCbCr (YBR_FULL) pixel as RGB, with pydicom's matrix and rounding (PS3.3 C.7.6.3.1.2).
fn ybr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let (y, cb, cr) = (y as f32, cb as f32 - 128.0, cr as f32 - 128.0);
    let to_u8 = |v: f32| (v + 0.5).floor().clamp(0.0, 255.0) as u8;
    [
        to_u8(y + 1.402 * cr),
        to_u8(y - (0.114 * 1.772 / 0.587) * cb - (0.299 * 1.402 / 0.587) * cr),
        to_u8(y + 1.772 * cb),
    ]
}

/// An uncompressed YBR_FULL_422 frame (`Y1 Y2 Cb Cr` for every two pixels of a row, 8 bits) as
/// RGB.
fn ybr_full_422_to_rgb(data: &[u8], cols: u32, rows: u32, bits: u32) -> Checked<DynamicImage> {
    if bits != 8 || !cols.is_multiple_of(2) {
        return Err(Corrupt(format!(
            "unsupported pixel description (YBR_FULL_422 of {bits} bits and {cols} columns; 8 bits and an even number of columns are read)"
        )));
    }
    let mut rgb = Vec::with_capacity(cols as usize * rows as usize * 3);
    for quad in data.chunks_exact(4) {
        rgb.extend(ybr_to_rgb(quad[0], quad[2], quad[3]));
        rgb.extend(ybr_to_rgb(quad[1], quad[2], quad[3]));
    }
    image::RgbImage::from_raw(cols, rows, rgb)
        .map(DynamicImage::ImageRgb8)
        .ok_or_else(|| "a YBR_FULL_422 frame of the wrong size".into())
}

/// Transfer syntax UIDs of JPEG baseline (8 bits) and extended.
const JPEG_LOSSY: [&str; 2] = ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"];

/// A colour JPEG frame (8 bits, 3 components), decoded as pydicom (through libjpeg) decodes it.
/// A whole Adobe APP14 marker decides the colour space of the components: transform 0 is RGB, kept
/// as it is; 1 is YCbCr, converted to RGB. Without one the file's Photometric Interpretation
/// decides: RGB is kept, YBR_FULL and YBR_FULL_422 are converted. (jpeg-decoder 0.3, which
/// dicom-transfer-syntax-registry 0.10 uses, lets component identifiers 1, 2, 3 outrank the
/// Adobe marker and guesses YCbCr for an RGB stream without markers.)
fn colour_jpeg(data: &[u8], photometric: &str, cols: u32, rows: u32) -> Checked<DynamicImage> {
    // FF EE, a 2-byte length, "Adobe", version (2), flags (2 + 2), transform (1). A shorter
    // marker carries no transform and is ignored, as libjpeg ignores it.
    let adobe = data
        .windows(16)
        .find(|w| {
            w[..2] == [0xFF, 0xEE] && u16::from_be_bytes([w[2], w[3]]) >= 14 && &w[4..9] == b"Adobe"
        })
        .map(|w| w[15]);
    let ybr = match adobe {
        Some(transform) => transform != 0,
        None => photometric.starts_with("YBR_FULL"),
    };
    let mut decoder = jpeg_decoder::Decoder::new(data);
    decoder.set_max_decoding_buffer_size(crate::preprocess::MAX_ALLOC as usize);
    // `RGB` interleaves the three components unchanged; jpeg-decoder 0.3's `None` writes
    // them one plane after another and overruns its line buffer.
    decoder.set_color_transform(jpeg_decoder::ColorTransform::RGB);
    let mut rgb = decoder
        .decode()
        .map_err(|e| format!("cannot decode the pixel data ({e})"))?;
    let info = decoder
        .info()
        .ok_or("cannot decode the pixel data (no frame header)")?;
    if info.pixel_format != jpeg_decoder::PixelFormat::RGB24
        || (info.width as u32, info.height as u32) != (cols, rows)
    {
        return Err(Corrupt(format!(
            "the JPEG stream holds a {}x{} {:?} image, the file declares {cols}x{rows} RGB",
            info.width, info.height, info.pixel_format
        )));
    }
    if ybr {
        for p in rgb.chunks_exact_mut(3) {
            p.copy_from_slice(&ybr_to_rgb(p[0], p[1], p[2]));
        }
    }
    image::RgbImage::from_raw(cols, rows, rgb)
        .map(DynamicImage::ImageRgb8)
        .ok_or_else(|| "a JPEG frame of the wrong size".into())
}

/// The VOI transform: the file's first VOI LUT or window, else a min-max normalisation.
///
/// dicom-pixeldata 0.10 finds the range of its min-max normalisation on the stored samples
/// read as unsigned, so a signed image with negative values comes out black. For a signed
/// monochrome image without a VOI LUT or window the range of the rescaled values is given as the
/// window instead.
fn normalisation(pixels: &DecodedPixelData<'_>) -> VoiLutOption {
    let without_voi =
        matches!(pixels.window(), Ok(None)) && matches!(pixels.voi_lut_sequence(), Ok(None));
    if !(without_voi
        && pixels.photometric_interpretation().is_monochrome()
        && pixels.pixel_representation() == PixelRepresentation::Signed)
    {
        return VoiLutOption::First;
    }
    let Ok(values) = pixels.to_vec_frame::<f64>(0) else {
        return VoiLutOption::First;
    };
    let (lo, hi) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    if hi > lo {
        VoiLutOption::Custom(WindowLevel {
            center: (lo + hi) / 2.0,
            width: hi - lo,
        })
    } else {
        VoiLutOption::First
    }
}

/// Transfer syntax UID of RLE Lossless.
const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// Checks an RLE Lossless frame (DICOM PS3.5 annex G): a 64-byte header with the number of
/// segments and their offsets, then `segments` PackBits streams that must each decode to at
/// least `pixels` bytes.
fn check_rle(fragment: &[u8], pixels: usize, segments: usize) -> Checked<()> {
    let word = |i: usize| u32::from_le_bytes(fragment[i..i + 4].try_into().unwrap()) as usize;
    if fragment.len() < 64 {
        return Err(Corrupt(format!(
            "a header of {} bytes, 64 expected",
            fragment.len()
        )));
    }
    let n = word(0);
    if !(segments..=15).contains(&n) {
        return Err(Corrupt(format!("{n} segments, {segments} expected")));
    }
    let mut offsets: Vec<usize> = (0..n).map(|i| word(4 + 4 * i)).collect();
    offsets.push(fragment.len());
    for s in 0..segments {
        let segment = fragment
            .get(offsets[s]..offsets[s + 1])
            .ok_or_else(|| format!("segment {s} lies outside the data"))?;
        let decoded = packbits_len(segment, pixels);
        if decoded < pixels {
            return Err(Corrupt(format!(
                "segment {s} decodes to {decoded} of {pixels} bytes"
            )));
        }
    }
    Ok(())
}

/// How many bytes a PackBits stream decodes to, up to `limit`; a truncated run ends it.
fn packbits_len(data: &[u8], limit: usize) -> usize {
    let (mut i, mut out) = (0usize, 0usize);
    while i < data.len() && out < limit {
        let header = data[i] as i8;
        i += 1;
        match header {
            0..=127 => {
                let n = header as usize + 1;
                if i + n > data.len() {
                    break;
                }
                i += n;
                out += n;
            }
            -128 => {}
            _ => {
                if i >= data.len() {
                    break;
                }
                i += 1;
                out += (1 - header as isize) as usize;
            }
        }
    }
    out
}

/// Whether bytes are a DICOM Part 10 file (`DICM` after the 128-byte preamble).
pub fn is_dicom(bytes: &[u8]) -> bool {
    bytes.len() >= 132 && &bytes[128..132] == b"DICM"
}

/// Decodes the first frame of a DICOM file to grey levels (8 bits), with the modality and VOI
/// transforms applied. `max_side` bounds the accepted rows and columns.
pub fn decode(bytes: &[u8], max_side: u32) -> Result<DynamicImage> {
    let obj = open(bytes)?;
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    let d = Description::of(&obj, max_side)?;
    let (rows, cols, bits_allocated, samples) = (d.rows, d.cols, d.bits_allocated, d.samples);
    let pixel_data = obj
        .element(dicom_dictionary_std::tags::PIXEL_DATA)
        .map_err(|_| bad("no pixel data in the file"))?;
    let native = pixel_data.value().fragments().is_none();
    // Uncompressed YBR_FULL_422 holds two luminance samples and one pair of chrominance samples
    // for every two pixels of a row: 2 samples a pixel, not 3 (PS3.3 C.7.6.3.1.2).
    let ybr422 = native && d.photometric == "YBR_FULL_422";
    let samples_stored = if ybr422 { 2 } else { samples as u64 };
    let frame_bytes =
        rows as u64 * cols as u64 * samples_stored * bits_allocated.div_ceil(8) as u64;
    if frame_bytes > crate::preprocess::MAX_ALLOC {
        return Err(bad(format!(
            "a frame of {cols}x{rows} pixels, {samples} samples of {bits_allocated} bits, exceeds the decoding limit of {} MiB",
            crate::preprocess::MAX_ALLOC >> 20
        )));
    }
    if native {
        // Native (uncompressed) pixel data: a file declaring more pixels than it holds is
        // refused before anything of the declared size is allocated.
        let data = pixel_data.to_bytes().unwrap_or_default();
        let held = data.len() as u64;
        if held < frame_bytes {
            return Err(bad(format!(
                "truncated pixel data ({held} bytes for a {cols}x{rows} frame of {frame_bytes} bytes)"
            )));
        }
        if ybr422 {
            // dicom-pixeldata 0.10 reads these as 3 samples a pixel.
            return ybr_full_422_to_rgb(&data[..frame_bytes as usize], cols, rows, bits_allocated)
                .map_err(bad);
        }
    }
    let fragments = pixel_data.value().fragments().unwrap_or_default();
    if ts == RLE_LOSSLESS {
        // The RLE decoder of dicom-transfer-syntax-registry 0.10 indexes past the end of a
        // segment that decodes to fewer bytes than the frame needs (found by fuzzing), so the
        // segments are checked first.
        let fragment = fragments
            .first()
            .ok_or_else(|| bad("RLE pixel data without a fragment"))?;
        check_rle(
            fragment,
            rows as usize * cols as usize,
            (samples * bits_allocated.div_ceil(8)) as usize,
        )
        .map_err(|m| bad(format!("corrupt RLE pixel data ({m})")))?;
    }
    if samples == 3 && bits_allocated == 8 && JPEG_LOSSY.contains(&ts.as_str()) {
        // The first frame: every fragment of a single frame, or the first of one per frame.
        let frame = match fragments.len() {
            n if d.frames == 1 && n > 0 => Some(fragments.concat()),
            n if n == d.frames => Some(fragments[0].clone()),
            _ => None,
        };
        if let Some(frame) = frame {
            return colour_jpeg(&frame, &d.photometric, cols, rows).map_err(bad);
        }
    }
    first_frame(&obj, &ts)
}

/// An error of a DICOM file.
/// Why a DICOM file's structure or pixel data is refused before or while it is decoded (the
/// detail; [`bad`] makes it the library's error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
struct Corrupt(String);

impl From<String> for Corrupt {
    fn from(m: String) -> Self {
        Corrupt(m)
    }
}

impl From<&str> for Corrupt {
    fn from(m: &str) -> Self {
        Corrupt(m.to_string())
    }
}

/// The result of a structural check of a DICOM file.
type Checked<T> = std::result::Result<T, Corrupt>;

fn bad(m: impl std::fmt::Display) -> Error {
    Error::Decode(format!("DICOM: {m}"))
}

/// Opens a Part 10 file whose element lengths [`check_lengths`] accepts (an implicit-VR data
/// set under an explicit transfer syntax is read as what it is).
fn open(bytes: &[u8]) -> Result<dicom_object::DefaultDicomObject> {
    let implicit_at = check_lengths(bytes).map_err(|m| bad(format!("corrupt file ({m})")))?;
    let unreadable = |e: String| bad(format!("unreadable file ({e})"));
    Ok(match implicit_at {
        None => OpenFileOptions::new()
            .read_preamble(ReadPreamble::Always)
            .from_reader(bytes)
            .map_err(|e| unreadable(e.to_string()))?,
        Some(start) => {
            // The meta group as written, the data set in implicit VR; the pixel data are then
            // decoded by the transfer syntax the meta group names.
            let meta =
                FileMetaTable::from_reader(&bytes[128..]).map_err(|e| unreadable(e.to_string()))?;
            let implicit = entries::IMPLICIT_VR_LITTLE_ENDIAN.erased();
            InMemDicomObject::read_dataset_with_ts(&bytes[start..], &implicit)
                .map_err(|e| unreadable(e.to_string()))?
                .with_exact_meta(meta)
        }
    })
}

/// The image a file describes, checked before any pixel is read: out-of-range descriptions
/// trip assertions inside dicom-pixeldata (found by fuzzing).
struct Description {
    rows: u32,
    cols: u32,
    bits_allocated: u32,
    samples: u32,
    photometric: String,
    frames: usize,
}

impl Description {
    fn of(obj: &dicom_object::DefaultDicomObject, max_side: u32) -> Result<Self> {
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
            return Err(bad("no image in the file (Rows/Columns missing)"));
        }
        if rows > max_side || cols > max_side {
            return Err(bad(format!(
                "the image is {cols}x{rows} pixels, more than the limit of {max_side}x{max_side}"
            )));
        }
        let bits_allocated = match dim(dicom_dictionary_std::tags::BITS_ALLOCATED) {
            0 => 16,
            b => b,
        };
        let samples = dim(dicom_dictionary_std::tags::SAMPLES_PER_PIXEL).max(1);
        let bits_stored = obj
            .element(dicom_dictionary_std::tags::BITS_STORED)
            .ok()
            .map(|e| e.to_int::<u32>().unwrap_or(0));
        if matches!(bits_allocated, 1 | 32) {
            return Err(bad(format!(
                "{bits_allocated}-bit pixel data are not read (radiographs have 8 to 16; {} is not an X-ray)",
                if bits_allocated == 1 {
                    "a 1-bit image, such as a segmentation,"
                } else {
                    "a 32-bit grid, such as a dose map,"
                }
            )));
        }
        if !matches!(bits_allocated, 8 | 16)
            || bits_stored.is_some_and(|b| b == 0 || b > bits_allocated)
            || !matches!(samples, 1 | 3)
        {
            return Err(bad(format!(
                "unsupported pixel description ({bits_allocated} bits allocated, {} stored, {samples} samples per pixel)",
                bits_stored.map_or("unknown".to_string(), |b| b.to_string())
            )));
        }
        let photometric = obj
            .element(dicom_dictionary_std::tags::PHOTOMETRIC_INTERPRETATION)
            .ok()
            .and_then(|e| {
                e.to_str()
                    .ok()
                    .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
            })
            .unwrap_or_default();
        Ok(Description {
            rows,
            cols,
            bits_allocated,
            samples,
            photometric,
            frames: dim(dicom_dictionary_std::tags::NUMBER_OF_FRAMES).max(1) as usize,
        })
    }
}

/// The first frame through dicom-pixeldata, its values windowed to 8 bits.
fn first_frame(obj: &dicom_object::DefaultDicomObject, ts: &str) -> Result<DynamicImage> {
    let pixels = obj.decode_pixel_data_frame(0).map_err(|e| {
        let msg = e.to_string();
        if msg.to_lowercase().contains("unsupported") || msg.contains("not supported") {
            bad(format!("unsupported transfer syntax {ts} ({msg})"))
        } else {
            bad(format!("cannot decode the pixel data ({msg})"))
        }
    })?;
    let options = ConvertOptions::new()
        .with_voi_lut(normalisation(&pixels))
        .force_8bit();
    pixels
        .to_dynamic_image_with_options(0, &options)
        .map_err(|e| bad(format!("cannot convert the pixel data ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Preamble, magic and a meta group naming explicit VR little endian: its group length,
    /// then (0002,0010) UI of 20 bytes.
    fn explicit_le_meta() -> Vec<u8> {
        let mut f = vec![0u8; 128];
        f.extend(b"DICM");
        f.extend([0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0, 28, 0, 0, 0]);
        f.extend([0x02, 0x00, 0x10, 0x00, b'U', b'I', 20, 0]);
        f.extend(b"1.2.840.10008.1.2.1\0");
        f
    }

    #[test]
    fn declared_lengths_beyond_the_file_are_refused() {
        // Preamble, magic, the meta group (its length, then (0002,0010) UI of 20 bytes), then
        // (7FE0,0010) OW declaring 2 GB.
        let mut f = explicit_le_meta();
        f.extend([
            0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0, 0xFF, 0xFF, 0xFF, 0x7F,
        ]);
        f.extend([0u8; 16]);
        let e = check_lengths(&f).unwrap_err().0;
        assert!(
            e.contains("(7FE0,0010) declares 2147483647 bytes, only 16 remain"),
            "{e}"
        );
        let n = f.len();
        f[n - 20..n - 16].copy_from_slice(&16u32.to_le_bytes());
        assert!(check_lengths(&f).is_ok());
        // An unknown VR is read with a 4-byte length, as the parser reads it.
        f[n - 24..n - 22].copy_from_slice(b"ZZ");
        f[n - 20..n - 16].copy_from_slice(&u32::MAX.to_le_bytes()[..4]);
        f[n - 20] = 0xF0;
        assert!(check_lengths(&f).unwrap_err().0.contains("declares"));
        let e = decode(&f, 100).unwrap_err().to_string();
        assert!(e.contains("DICOM"), "{e}");
    }

    #[test]
    fn an_implicit_data_set_under_an_explicit_transfer_syntax_is_found() {
        // The meta group says explicit VR little endian; the data set's first element,
        // (0008,0008) of 4 bytes, is written in implicit VR (a 4-byte length after the tag).
        let mut f = explicit_le_meta();
        let start = f.len();
        f.extend([0x08, 0x00, 0x08, 0x00, 4, 0, 0, 0]);
        f.extend(b"ORIG");
        assert_eq!(check_lengths(&f), Ok(Some(start)));
        // The same element in explicit VR is read as written.
        f.truncate(start);
        f.extend([0x08, 0x00, 0x08, 0x00, b'C', b'S', 4, 0]);
        f.extend(b"ORIG");
        assert_eq!(check_lengths(&f), Ok(None));
    }

    #[test]
    fn packbits_lengths() {
        // A literal run of 3, a repeat of 4, a no-op, then a truncated literal run.
        let data = [2, 1, 2, 3, (-3i8) as u8, 9, 0x80, 5, 1];
        assert_eq!(packbits_len(&data, 100), 7);
        assert_eq!(packbits_len(&data, 3), 3);
    }

    #[test]
    fn short_or_misplaced_rle_segments_are_refused() {
        let mut frame = vec![0u8; 64];
        frame[0] = 1; // one segment
        frame[4] = 64; // at offset 64
        frame.extend([(-99i8) as u8, 7]); // 100 bytes of 7
        assert!(check_rle(&frame, 100, 1).is_ok());
        assert!(
            check_rle(&frame, 101, 1)
                .unwrap_err()
                .0
                .contains("100 of 101")
        );
        assert!(
            check_rle(&frame, 100, 2)
                .unwrap_err()
                .0
                .contains("segments")
        );
        frame[4] = 200;
        assert!(check_rle(&frame, 100, 1).unwrap_err().0.contains("outside"));
        assert!(
            check_rle(&frame[..10], 100, 1)
                .unwrap_err()
                .0
                .contains("header")
        );
    }
}
