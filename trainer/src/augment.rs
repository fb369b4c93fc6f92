//! The paper's training augmentation on the cached grey square: RandomResizedCrop(side, scale
//! 0.8–1.0, ratio 3/4–4/3) → rotation ±15° → horizontal flip (p = 0.5) → centre crop → normalise.

use image::GrayImage;
use image::imageops::FilterType;
use imageproc::geometric_transformations::{Interpolation, rotate_about_center};
use pneumoscope::arch::InputConfig;
use rand::Rng;

/// Augmentation settings.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Smallest area fraction of the random crop.
    pub min_scale: f64,
    /// Largest rotation, in degrees.
    pub max_rotation: f32,
    /// Random horizontal flips.
    pub hflip: bool,
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            min_scale: 0.8,
            max_rotation: 15.0,
            hflip: true,
        }
    }
}

impl Augment {
    /// One random view of a grey square, as a normalised `[3, crop, crop]` vector.
    pub fn apply<R: Rng>(&self, square: &GrayImage, input: &InputConfig, rng: &mut R) -> Vec<f32> {
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
            img = rotate_about_center(
                &img,
                deg.to_radians(),
                Interpolation::Bilinear,
                image::Luma([0]),
            );
        }
        if self.hflip && rng.random_bool(0.5) {
            image::imageops::flip_horizontal_in_place(&mut img);
        }
        pneumoscope::preprocess::normalize_gray(&img, input)
    }
}
