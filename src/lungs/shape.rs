//! Mask geometry: the mask at the image's size ([`LungMask`]), its regions, crop rectangle and
//! share of a Grad-CAM map; the shape of the lung fields and the plausibility rules
//! ([`LungShape`], [`PLAUSIBLE`]); the Dice and IoU of two masks ([`dice_iou`]).

use super::*;
use crate::arch::InputConfig;
use image::GrayImage;
use serde::{Deserialize, Serialize};

/// A predicted lung mask: the probabilities on the `MASK_SIDE`² grid and the size of the image
/// they cover.
#[derive(Clone, Debug, PartialEq)]
pub struct LungMask {
    /// Lung probabilities on the `MASK_SIDE`² grid, row-major.
    pub grid: Vec<f32>,
    /// Width of the image, in pixels.
    pub width: u32,
    /// Height of the image, in pixels.
    pub height: u32,
}

impl LungMask {
    /// A mask from the segmenter's probabilities for an image of the given size.
    pub fn from_probabilities(grid: Vec<f32>, width: u32, height: u32) -> Self {
        assert_eq!(grid.len(), MASK_SIDE * MASK_SIDE, "mask grid size");
        Self {
            grid,
            width,
            height,
        }
    }

    /// The probability at a point of the image, `(x, y)` in image pixels (bilinear on the
    /// grid, clamped at the edges).
    pub fn probability_at(&self, x: f32, y: f32) -> f32 {
        let s = MASK_SIDE as f32;
        let gx = (x / self.width as f32 * s - 0.5).clamp(0.0, s - 1.0);
        let gy = (y / self.height as f32 * s - 0.5).clamp(0.0, s - 1.0);
        bilinear(&self.grid, MASK_SIDE, gx, gy)
    }

    /// The binary mask at the image's size (probability ≥ 0.5), 255 for lung, 0 elsewhere.
    pub fn to_image(&self) -> GrayImage {
        GrayImage::from_fn(self.width, self.height, |x, y| {
            let p = self.probability_at(x as f32 + 0.5, y as f32 + 0.5);
            image::Luma([if p >= 0.5 { 255 } else { 0 }])
        })
    }

    /// The 4-connected lung regions of the grid: a region index per grid pixel (`usize::MAX`
    /// outside the lungs) and the size of each region.
    fn components(&self) -> (Vec<usize>, Vec<usize>) {
        let n = MASK_SIDE;
        let mut label = vec![usize::MAX; n * n];
        let mut sizes = Vec::new();
        for start in 0..n * n {
            if self.grid[start] < 0.5 || label[start] != usize::MAX {
                continue;
            }
            let id = sizes.len();
            let mut stack = vec![start];
            label[start] = id;
            let mut size = 0;
            while let Some(i) = stack.pop() {
                size += 1;
                let (x, y) = (i % n, i / n);
                let neighbours = [
                    (x > 0).then(|| i - 1),
                    (x + 1 < n).then(|| i + 1),
                    (y > 0).then(|| i - n),
                    (y + 1 < n).then(|| i + n),
                ];
                for j in neighbours.into_iter().flatten() {
                    if self.grid[j] >= 0.5 && label[j] == usize::MAX {
                        label[j] = id;
                        stack.push(j);
                    }
                }
            }
            sizes.push(size);
        }
        (label, sizes)
    }

    /// The mask with every lung region but the `keep` largest (4-connected, on the grid)
    /// set to probability 0.
    pub fn largest_regions(mut self, keep: usize) -> Self {
        let (label, sizes) = self.components();
        let mut order: Vec<usize> = (0..sizes.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(sizes[i]));
        let kept: Vec<usize> = order.into_iter().take(keep).collect();
        for (p, l) in self.grid.iter_mut().zip(&label) {
            if *l != usize::MAX && !kept.contains(l) {
                *p = 0.0;
            }
        }
        self
    }

    /// Number of lung regions (4-connected, on the grid).
    pub fn regions(&self) -> usize {
        self.components().1.len()
    }

    /// The figures of the mask that tell a frontal chest X-ray from other images.
    pub fn shape(&self) -> LungShape {
        let (label, sizes) = self.components();
        let n = MASK_SIDE;
        let mut order: Vec<usize> = (0..sizes.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(sizes[i]));
        let centre_x = |region: usize| {
            let (sum, count) = label
                .iter()
                .enumerate()
                .filter(|(_, l)| **l == region)
                .fold((0usize, 0usize), |(s, c), (i, _)| (s + i % n, c + 1));
            sum as f32 / count.max(1) as f32 / n as f32
        };
        let (balance, side_by_side) = match order[..] {
            [a, b, ..] => {
                let (xa, xb) = (centre_x(a), centre_x(b));
                (
                    sizes[b] as f32 / sizes[a] as f32,
                    (xa - 0.5) * (xb - 0.5) < 0.0,
                )
            }
            _ => (0.0, false),
        };
        let left = (0..n * n)
            .filter(|&i| i % n < n / 2 && self.grid[i] >= 0.5)
            .count();
        let right = (0..n * n)
            .filter(|&i| i % n >= n / 2 && self.grid[i] >= 0.5)
            .count();
        LungShape {
            regions: sizes.len(),
            area_fraction: self.area_fraction(),
            balance,
            side_by_side,
            halves: left.min(right) as f32 / left.max(right).max(1) as f32,
        }
    }

    /// The bounding box of the lung pixels (probability ≥ 0.5), in image pixels; `None` when
    /// the mask holds no lung.
    pub fn bounding_box(&self) -> Option<Rect> {
        let n = MASK_SIDE;
        let (mut x0, mut y0, mut x1, mut y1) = (n, n, 0, 0);
        for (i, _) in self.grid.iter().enumerate().filter(|(_, p)| **p >= 0.5) {
            let (x, y) = (i % n, i / n);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
        }
        if x1 == 0 {
            return None;
        }
        let to_x = |g: usize| (g as f64 * self.width as f64 / n as f64).round() as u32;
        let to_y = |g: usize| (g as f64 * self.height as f64 / n as f64).round() as u32;
        let (x, y) = (to_x(x0), to_y(y0));
        Some(Rect {
            x,
            y,
            width: (to_x(x1) - x).max(1),
            height: (to_y(y1) - y).max(1),
        })
    }

    /// The part of the image lung-focused input keeps: the lungs' bounding box widened by
    /// [`CROP_MARGIN`] of its width on the left and the right and of its height at the top and
    /// the bottom, cut to the image. `None` when the mask holds no lung.
    pub fn crop_rect(&self) -> Option<Rect> {
        let b = self.bounding_box()?;
        let widen = |start: u32, len: u32, limit: u32| {
            let m = len as f32 * CROP_MARGIN;
            let lo = (start as f32 - m).round().max(0.0) as u32;
            let hi = ((start + len) as f32 + m).round().min(limit as f32) as u32;
            (lo, (hi - lo).max(1))
        };
        let (x, width) = widen(b.x, b.width, self.width);
        let (y, height) = widen(b.y, b.height, self.height);
        Some(Rect {
            x,
            y,
            width,
            height,
        })
    }

    /// This mask on a part of its image: the probabilities resampled over `rect` (bilinear),
    /// for an image of `rect`'s size.
    pub fn within(&self, rect: Rect) -> LungMask {
        let n = MASK_SIDE as f32;
        let grid = (0..MASK_SIDE * MASK_SIDE)
            .map(|i| {
                let (gx, gy) = ((i % MASK_SIDE) as f32, (i / MASK_SIDE) as f32);
                self.probability_at(
                    rect.x as f32 + (gx + 0.5) / n * rect.width as f32,
                    rect.y as f32 + (gy + 0.5) / n * rect.height as f32,
                )
            })
            .collect();
        LungMask::from_probabilities(grid, rect.width, rect.height)
    }

    /// Share of the binary mask's pixels that are lung, on the grid.
    pub fn area_fraction(&self) -> f32 {
        self.grid.iter().filter(|&&p| p >= 0.5).count() as f32 / self.grid.len() as f32
    }

    /// The binary grid dilated by `radius` grid pixels (a square neighbourhood).
    pub fn dilated_grid(&self, radius: usize) -> Vec<bool> {
        let n = MASK_SIDE;
        let bin: Vec<bool> = self.grid.iter().map(|&p| p >= 0.5).collect();
        // Separable: rows, then columns.
        let mut rows = vec![false; n * n];
        for y in 0..n {
            for x in 0..n {
                let lo = x.saturating_sub(radius);
                let hi = (x + radius).min(n - 1);
                rows[y * n + x] = (lo..=hi).any(|i| bin[y * n + i]);
            }
        }
        let mut out = vec![false; n * n];
        for y in 0..n {
            let lo = y.saturating_sub(radius);
            let hi = (y + radius).min(n - 1);
            for x in 0..n {
                out[y * n + x] = (lo..=hi).any(|j| rows[j * n + x]);
            }
        }
        out
    }

    /// The lung mask, dilated by `dilation` grid pixels, sampled on a classifier's centre crop:
    /// `side`² values (1 inside, 0 outside), row-major, for a crop of `input` of this image.
    pub fn on_crop(&self, input: &InputConfig, side: usize, dilation: usize) -> Vec<f32> {
        let dilated = self.dilated_grid(dilation);
        let (x0, y0, span) = crop_box(self.width, self.height, input);
        let s = MASK_SIDE as f32;
        let mut out = Vec::with_capacity(side * side);
        for j in 0..side {
            for i in 0..side {
                let x = x0 + (i as f32 + 0.5) / side as f32 * span;
                let y = y0 + (j as f32 + 0.5) / side as f32 * span;
                let gx = ((x / self.width as f32 * s) as usize).min(MASK_SIDE - 1);
                let gy = ((y / self.height as f32 * s) as usize).min(MASK_SIDE - 1);
                out.push(if dilated[gy * MASK_SIDE + gx] {
                    1.0
                } else {
                    0.0
                });
            }
        }
        out
    }

    /// Share of a Grad-CAM map's mass inside the dilated lung fields: Σ cam·mask / Σ cam over
    /// the map (negative values count as 0). `cam` is `side`² values over the centre crop of
    /// `input`, as [`crate::gradcam`] gives them. `None` when the map is all zero.
    pub fn share_of_cam(&self, cam: &[f32], side: usize, input: &InputConfig) -> Option<f32> {
        assert_eq!(cam.len(), side * side, "Grad-CAM map size");
        let inside = self.on_crop(input, side, SHARE_DILATION);
        let total: f64 = cam.iter().map(|&v| v.max(0.0) as f64).sum();
        if total <= 0.0 {
            return None;
        }
        let within: f64 = cam
            .iter()
            .zip(&inside)
            .map(|(&v, &m)| v.max(0.0) as f64 * m as f64)
            .sum();
        Some((within / total) as f32)
    }
}

/// A rectangle of image pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rect {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// The figures of a lung mask that tell a frontal chest X-ray from other images
/// ([`LungMask::shape`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LungShape {
    /// Lung regions (4-connected, on the grid).
    pub regions: usize,
    /// Share of the image that is lung.
    pub area_fraction: f32,
    /// Area of the second largest region over the largest (0 with fewer than two).
    pub balance: f32,
    /// Whether the two largest regions lie on either side of the image's vertical midline
    /// (their centroids do).
    pub side_by_side: bool,
    /// Lung area in the image's left half over that in its right half, or the reverse: the
    /// smaller over the larger (0 when one half has none).
    pub halves: f32,
}

/// What a frontal chest X-ray's lung fields look like to the segmenter: the bounds within
/// which [`LungShape::implausible`] says nothing. Chosen on training and validation X-rays of
/// the classifier's data (children and adults, every collection; `pneumoscope lungs shapes`)
/// so that under 1 % of them fall outside; see the model card.
pub struct Plausible {
    /// Lowest and highest share of the image that is lung.
    pub area: (f32, f32),
    /// Lowest lung area in one half of the image (left or right of its midline) over that in
    /// the other.
    pub halves: f32,
}

/// The bounds of [`Plausible`] in use.
pub const PLAUSIBLE: Plausible = Plausible {
    area: (0.10, 0.55),
    halves: 0.5,
};

impl LungShape {
    /// Why these lung fields are unlike a frontal chest X-ray's (for the out-of-distribution
    /// warning), or `None` when they are like one. The connected regions (`regions`,
    /// `balance`, `side_by_side`) are reported but not judged: children's two lungs often join
    /// above the heart in the mask.
    pub fn implausible(&self) -> Option<String> {
        let p = PLAUSIBLE;
        let pct = |v: f32| format!("{:.0} %", v * 100.0);
        if self.regions == 0 {
            return Some("no lung fields were found".into());
        }
        if self.area_fraction < p.area.0 || self.area_fraction > p.area.1 {
            return Some(format!(
                "the lung fields cover {} of the image (frontal chest X-rays: {}–{})",
                pct(self.area_fraction),
                pct(p.area.0),
                pct(p.area.1)
            ));
        }
        if self.halves < p.halves {
            return Some(format!(
                "the lung fields lie mostly on one side of the image ({} as much lung in one half \
                 as in the other; frontal chest X-rays: at least {})",
                pct(self.halves),
                pct(p.halves)
            ));
        }
        None
    }
}

/// The centre crop of the evaluation transform in image pixels: its top-left corner and its
/// side (the shorter side is resized to `input.resize`, then `input.crop` is cut from the
/// centre).
pub fn crop_box(width: u32, height: u32, input: &InputConfig) -> (f32, f32, f32) {
    let short = width.min(height) as f32;
    let span = short * input.crop as f32 / input.resize as f32;
    (
        (width as f32 - span) / 2.0,
        (height as f32 - span) / 2.0,
        span,
    )
}

pub(crate) fn bilinear(grid: &[f32], n: usize, x: f32, y: f32) -> f32 {
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(n - 1), (y0 + 1).min(n - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let at = |xx: usize, yy: usize| grid[yy * n + xx];
    let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
    let bottom = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// Dice and IoU of a predicted binary mask against a reference of the same size
/// (`true` = lung). Both empty counts as perfect agreement.
pub fn dice_iou(pred: &[bool], truth: &[bool]) -> (f64, f64) {
    assert_eq!(pred.len(), truth.len(), "mask sizes");
    let (mut inter, mut p, mut t) = (0u64, 0u64, 0u64);
    for (&a, &b) in pred.iter().zip(truth) {
        inter += u64::from(a && b);
        p += u64::from(a);
        t += u64::from(b);
    }
    if p + t == 0 {
        return (1.0, 1.0);
    }
    let dice = 2.0 * inter as f64 / (p + t) as f64;
    let iou = inter as f64 / (p + t - inter) as f64;
    (dice, iou)
}
