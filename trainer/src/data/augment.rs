//! Training augmentation on the cached grey square.
//!
//! The paper's geometry: RandomResizedCrop(side, scale 0.8–1.0, ratio 3/4–4/3) → rotation ±15°
//! → horizontal flip (p = 0.5). Then, each off unless asked for ([`Radiograph`]), what suits
//! radiographs and works against source shortcuts: brightness, contrast and gamma, a mild
//! Gaussian blur, Gaussian noise, and erasing at the corners and edges, where collections burn
//! in text, side markers and arrows. Then the centre crop and the normalisation.
//!
//! Every draw comes from the generator it is given, so a view is a function of its seed.

use image::imageops::FilterType;
use image::{GrayImage, Luma};
use imageproc::geometric_transformations::{Interpolation, rotate_about_center};
use pneumoscope::arch::InputConfig;
use rand::Rng;

/// Augmentation settings.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Smallest area fraction of the random crop.
    pub min_scale: f64,
    /// Largest rotation, in degrees.
    pub max_rotation: f32,
    /// Random horizontal flips.
    pub hflip: bool,
    /// The radiograph-specific part (all off by default; runs of earlier versions have none).
    #[serde(default, flatten)]
    pub radiograph: Radiograph,
}

/// Intensity, blur, noise and border augmentations (`train --aug-*`). Zero turns one off.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize, clap::Args,
)]
#[serde(default)]
pub struct Radiograph {
    /// Brightness: a shift drawn from ±this, as a fraction of the full grey range.
    #[arg(long = "aug-brightness", default_value_t = 0.0, value_parser = fraction)]
    pub brightness: f32,
    /// Contrast: a factor drawn from 1 ± this, around mid-grey.
    #[arg(long = "aug-contrast", default_value_t = 0.0, value_parser = fraction)]
    pub contrast: f32,
    /// Gamma: an exponent drawn log-uniformly from [1/(1+g), 1+g].
    #[arg(long = "aug-gamma", default_value_t = 0.0, value_parser = fraction)]
    pub gamma: f32,
    /// Blur: with probability 0.5, a Gaussian blur of σ drawn from (0, this] pixels.
    #[arg(long = "aug-blur", default_value_t = 0.0, value_parser = nonnegative)]
    pub blur: f32,
    /// Noise: Gaussian noise of standard deviation drawn from [0, this], as a fraction of the
    /// grey range.
    #[arg(long = "aug-noise", default_value_t = 0.0, value_parser = fraction)]
    pub noise: f32,
    /// Border erasing: each corner with probability 0.5, and each edge with probability 0.25,
    /// is covered by a block of random grey reaching at most this fraction of the side into
    /// the image (0.15: the outer 15 %, where text, markers and arrows sit).
    #[arg(long = "aug-border", default_value_t = 0.0, value_parser = border_fraction)]
    pub border: f32,
}

impl Radiograph {
    /// Whether any of it is on.
    pub fn any(&self) -> bool {
        *self != Radiograph::default()
    }
}

fn parse_f32(s: &str) -> Result<f32, String> {
    s.parse::<f32>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| format!("'{s}' is not a number"))
}

fn nonnegative(s: &str) -> Result<f32, String> {
    parse_f32(s).and_then(|v| {
        if v >= 0.0 {
            Ok(v)
        } else {
            Err(format!("'{s}' is negative"))
        }
    })
}

fn fraction(s: &str) -> Result<f32, String> {
    nonnegative(s).and_then(|v| {
        if v <= 1.0 {
            Ok(v)
        } else {
            Err(format!("'{s}' is not in [0, 1]"))
        }
    })
}

/// At most 0.4: erasing must leave the middle of the image, where the lungs are, alone.
fn border_fraction(s: &str) -> Result<f32, String> {
    fraction(s).and_then(|v| {
        if v <= 0.4 {
            Ok(v)
        } else {
            Err(format!(
                "'{s}': border erasing reaches at most 0.4 of the side, or it covers the lungs"
            ))
        }
    })
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            min_scale: 0.8,
            max_rotation: 15.0,
            hflip: true,
            radiograph: Radiograph::default(),
        }
    }
}

impl Augment {
    /// No change at all: the evaluation transform.
    pub fn none() -> Self {
        Self {
            min_scale: 1.0,
            max_rotation: 0.0,
            hflip: false,
            radiograph: Radiograph::default(),
        }
    }

    /// One random view of a grey square, as a normalised `[3, crop, crop]` vector.
    pub fn apply<R: Rng>(&self, square: &GrayImage, input: &InputConfig, rng: &mut R) -> Vec<f32> {
        let img = self.view(square, rng);
        pneumoscope::preprocess::normalize_gray(&img, input)
    }

    /// One random view of a grey square, before the centre crop and the normalisation.
    pub fn view<R: Rng>(&self, square: &GrayImage, rng: &mut R) -> GrayImage {
        let (w, h) = square.dimensions();
        let area = (w * h) as f64;
        // RandomResizedCrop as torchvision: up to 10 tries, else the whole image.
        let mut crop = (0, 0, w, h);
        for _ in 0..10 {
            let target = area * rng.random_range(self.min_scale..=1.0);
            let log_ratio = rng.random_range((3f64 / 4.0).ln()..=(4f64 / 3.0).ln());
            let ratio = log_ratio.exp();
            let cw = (target * ratio).sqrt().round() as u32;
            let ch = (target / ratio).sqrt().round() as u32;
            if cw > 0 && ch > 0 && cw <= w && ch <= h {
                let x = rng.random_range(0..=w - cw);
                let y = rng.random_range(0..=h - ch);
                crop = (x, y, cw, ch);
                break;
            }
        }
        let cropped = image::imageops::crop_imm(square, crop.0, crop.1, crop.2, crop.3).to_image();
        let mut img = image::imageops::resize(&cropped, w, h, FilterType::Triangle);
        if self.max_rotation > 0.0 {
            let deg: f32 = rng.random_range(-self.max_rotation..=self.max_rotation);
            img = rotate_about_center(&img, deg.to_radians(), Interpolation::Bilinear, Luma([0]));
        }
        if self.hflip && rng.random_bool(0.5) {
            image::imageops::flip_horizontal_in_place(&mut img);
        }
        if self.radiograph.any() {
            img = self.radiograph.apply(img, rng);
        }
        img
    }
}

impl Radiograph {
    /// Intensity (one look-up table), blur, noise, then the border blocks.
    fn apply<R: Rng>(&self, mut img: GrayImage, rng: &mut R) -> GrayImage {
        if self.brightness > 0.0 || self.contrast > 0.0 || self.gamma > 0.0 {
            let shift = uniform(rng, self.brightness);
            let factor = 1.0 + uniform(rng, self.contrast);
            let gamma = uniform(rng, (1.0 + self.gamma).ln()).exp();
            let lut: Vec<u8> = (0..=255u8)
                .map(|v| {
                    let x = f32::from(v) / 255.0;
                    let x = ((x - 0.5) * factor + 0.5 + shift).clamp(0.0, 1.0);
                    (x.powf(gamma) * 255.0).round() as u8
                })
                .collect();
            for p in img.pixels_mut() {
                p.0[0] = lut[usize::from(p.0[0])];
            }
        }
        if self.blur > 0.0 && rng.random_bool(0.5) {
            let sigma = rng.random_range(0.0..self.blur).max(0.05);
            img = imageproc::filter::gaussian_blur_f32(&img, sigma);
        }
        if self.noise > 0.0 {
            let sd = rng.random_range(0.0..=self.noise) * 255.0;
            for p in img.pixels_mut() {
                let v = f32::from(p.0[0]) + sd * normal(rng);
                p.0[0] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
        if self.border > 0.0 {
            erase_borders(&mut img, self.border, rng);
        }
        img
    }
}

/// A value drawn uniformly from ±`half` (0 when `half` is 0, without a draw).
fn uniform<R: Rng>(rng: &mut R, half: f32) -> f32 {
    if half > 0.0 {
        rng.random_range(-half..=half)
    } else {
        0.0
    }
}

/// A standard normal draw (Box–Muller).
fn normal<R: Rng>(rng: &mut R) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// Covers each corner (p = 0.5) and each edge (p = 0.25) with a block of one random grey that
/// reaches at most `reach` of the side into the image.
fn erase_borders<R: Rng>(img: &mut GrayImage, reach: f32, rng: &mut R) {
    let (w, h) = img.dimensions();
    let (mw, mh) = (
        ((w as f32 * reach) as u32).max(1),
        ((h as f32 * reach) as u32).max(1),
    );
    let fill = |img: &mut GrayImage, x0: u32, y0: u32, x1: u32, y1: u32, grey: u8| {
        for y in y0..y1 {
            for x in x0..x1 {
                img.put_pixel(x, y, Luma([grey]));
            }
        }
    };
    for corner in 0..4 {
        if rng.random_bool(0.5) {
            let bw = rng.random_range(mw / 3..=mw).max(1);
            let bh = rng.random_range(mh / 3..=mh).max(1);
            let grey: u8 = rng.random();
            let (x0, y0) = match corner {
                0 => (0, 0),
                1 => (w - bw, 0),
                2 => (0, h - bh),
                _ => (w - bw, h - bh),
            };
            fill(img, x0, y0, x0 + bw, y0 + bh, grey);
        }
    }
    for edge in 0..4 {
        if rng.random_bool(0.25) {
            let depth_x = rng.random_range(1..=mw / 2 + 1).min(mw);
            let depth_y = rng.random_range(1..=mh / 2 + 1).min(mh);
            let grey: u8 = rng.random();
            match edge {
                0 => fill(img, 0, 0, w, depth_y, grey),
                1 => fill(img, 0, h - depth_y, w, h, grey),
                2 => fill(img, 0, 0, depth_x, h, grey),
                _ => fill(img, w - depth_x, 0, w, h, grey),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// A real chest X-ray of the shared data as the cached grey square (256 px).
    fn square() -> Option<GrayImage> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/kermany/chest_xray/train/NORMAL");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            eprintln!("skipped: {} is absent", dir.display());
            return None;
        };
        let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        let img = image::open(&paths[0]).unwrap();
        Some(pneumoscope::preprocess::to_square_gray(&img, 256))
    }

    fn everything() -> Augment {
        Augment {
            radiograph: Radiograph {
                brightness: 0.1,
                contrast: 0.2,
                gamma: 0.3,
                blur: 1.0,
                noise: 0.03,
                border: 0.15,
            },
            ..Augment::default()
        }
    }

    /// The same seed gives the same view, bit for bit; other seeds give other views.
    #[test]
    fn a_view_is_a_function_of_its_seed() {
        let Some(sq) = square() else { return };
        let a = everything();
        let view = |seed| a.view(&sq, &mut ChaCha8Rng::seed_from_u64(seed));
        assert_eq!(view(7), view(7));
        let distinct: std::collections::HashSet<Vec<u8>> =
            (0..8).map(|s| view(s).into_raw()).collect();
        assert_eq!(distinct.len(), 8, "eight seeds, eight different views");
    }

    /// Border erasing touches only the outer band it is given: the middle of the image, where
    /// the lungs and the label's evidence are, is the geometric view's, pixel for pixel; and
    /// over many seeds it does erase something in that band.
    #[test]
    fn border_erasing_leaves_the_middle_alone() {
        let Some(sq) = square() else { return };
        let reach = 0.15;
        let erasing = Augment {
            radiograph: Radiograph {
                border: reach,
                ..Radiograph::default()
            },
            ..Augment::none()
        };
        let (w, h) = sq.dimensions();
        let band = (w as f32 * reach).ceil() as u32;
        let mut erased_somewhere = false;
        for seed in 0..50 {
            let v = erasing.view(&sq, &mut ChaCha8Rng::seed_from_u64(seed));
            // The same seed without erasing: the geometric draws come first, so they match.
            let plain = Augment::none().view(&sq, &mut ChaCha8Rng::seed_from_u64(seed));
            for (x, y, p) in v.enumerate_pixels() {
                let inside = x >= band && x < w - band && y >= band && y < h - band;
                if inside {
                    assert_eq!(p, plain.get_pixel(x, y), "seed {seed}: ({x}, {y}) changed");
                } else if p != plain.get_pixel(x, y) {
                    erased_somewhere = true;
                }
            }
        }
        assert!(erased_somewhere);
    }

    /// Intensity changes keep the order of grey levels (a darker pixel stays no brighter), so
    /// what the radiograph shows is kept; noise and blur off, geometry off.
    #[test]
    fn intensity_changes_are_monotone() {
        let Some(sq) = square() else { return };
        let a = Augment {
            radiograph: Radiograph {
                brightness: 0.2,
                contrast: 0.3,
                gamma: 0.5,
                ..Radiograph::default()
            },
            ..Augment::none()
        };
        for seed in 0..10 {
            let v = a.view(&sq, &mut ChaCha8Rng::seed_from_u64(seed));
            let plain = Augment::none().view(&sq, &mut ChaCha8Rng::seed_from_u64(seed));
            let mut map = [None::<u8>; 256];
            for (p, q) in plain.pixels().zip(v.pixels()) {
                map[usize::from(p.0[0])] = Some(q.0[0]);
            }
            let seen: Vec<u8> = map.iter().flatten().copied().collect();
            assert!(seen.windows(2).all(|w| w[0] <= w[1]), "seed {seed}");
        }
    }

    /// Options out of range are refused with the reason.
    #[test]
    fn out_of_range_options_are_refused() {
        assert!(border_fraction("0.5").unwrap_err().contains("lungs"));
        assert!(fraction("-0.1").unwrap_err().contains("negative"));
        assert!(fraction("nan").is_err());
        assert_eq!(fraction("0.25"), Ok(0.25));
    }
}
