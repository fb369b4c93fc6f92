//! Lung fields: a small segmentation network, its file, and how much of a Grad-CAM map lies
//! inside the lungs.
//!
//! The network ([`LungNet`]) is an EfficientNet-Lite0 encoder (ImageNet weights, kept frozen
//! while the decoder trains) with a feature-pyramid decoder: each of five encoder stages
//! (strides 2 to 32) is projected to [`DECODER_WIDTH`] channels, the coarsest is upsampled
//! and added to the next finer one, and a 3x3 convolution smooths each sum. The output is one
//! logit per pixel at stride 2, [`MASK_SIDE`]² for the [`INPUT_SIDE`]² input.
//!
//! Its input is the whole image squashed to a square (no crop), so the mask covers the whole
//! image whatever classifier runs beside it; [`LungMask::share_of_cam`] maps a Grad-CAM map of
//! any classifier's centre crop onto it.
//!
//! Its rooms: [`net`] (the network and its input), [`shape`] (mask geometry, plausibility,
//! Dice), [`draw`] (the outline) and [`file`] (the segmenter's file and a classifier's lung
//! section).

mod draw;
mod file;
mod net;
mod shape;

pub use draw::*;
pub use file::*;
pub use net::*;
pub use shape::*;

/// Side of the square the image is resized to (no crop), in pixels.
pub const INPUT_SIDE: usize = 256;
/// Side of the predicted mask (stride 2 of the input).
pub const MASK_SIDE: usize = INPUT_SIDE / 2;
/// The encoder's architecture in the registry.
pub const ENCODER: &str = "efficientnet_lite0";
/// The encoder stages the decoder reads: the output after this many MBConv blocks
/// (strides 2, 4, 8, 16, 32 of the input).
pub const TAPS: [usize; 5] = [1, 3, 5, 11, 16];
/// Channels of those stages in EfficientNet-Lite0.
pub const TAP_CHANNELS: [usize; 5] = [16, 24, 40, 112, 320];
/// Channels of the decoder.
pub const DECODER_WIDTH: usize = 32;
/// Format version of a lung-segmenter file (the model-file prefix and seal; see
/// [`crate::model_file`]). Files of the earlier version 3 (no seal) still load.
pub const LUNGS_FORMAT_VERSION: u32 = 6;
/// Radius, in mask pixels, by which the lung mask is dilated before the share of a Grad-CAM
/// map inside it is measured (3 of 128: about 2 % of the image's side, for the pleura and the
/// mask's own error).
pub const SHARE_DILATION: usize = 3;
/// Margin of lung-focused input ([`LungMask::crop_rect`]): the share of the lungs' bounding
/// box's width (height) added on its left and right (top and bottom). The crop is then
/// squashed to a square, so the classifier's centre crop (224 of 256, say) still holds the
/// whole box: 0.875 x 1.2 = 1.05 times it.
pub const CROP_MARGIN: f32 = 0.10;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::InputConfig;

    use burn::prelude::*;

    fn mask_with(f: impl Fn(usize, usize) -> bool, w: u32, h: u32) -> LungMask {
        let grid = (0..MASK_SIDE * MASK_SIDE)
            .map(|i| f(i % MASK_SIDE, i / MASK_SIDE) as u8 as f32)
            .collect();
        LungMask::from_probabilities(grid, w, h)
    }

    #[test]
    fn the_lung_crop_is_the_box_with_its_margin_inside_the_image() {
        // Lungs on grid columns 32..96 and rows 16..80 of a 1024x2048 image: in pixels
        // x 256..768, y 256..1280 (a 512x1024 box).
        let m = mask_with(
            |x, y| (32..96).contains(&x) && (16..80).contains(&y),
            1024,
            2048,
        );
        let b = m.bounding_box().unwrap();
        assert_eq!((b.x, b.y, b.width, b.height), (256, 256, 512, 1024));
        // A tenth of the width on either side, of the height above and below.
        let r = m.crop_rect().unwrap();
        assert_eq!(
            (r.x, r.y, r.width, r.height),
            (205, 154, 614, 1228),
            "{r:?}"
        );
        // At the image's edges the margin is cut.
        let low = mask_with(
            |x, y| (0..88).contains(&x) && (100..128).contains(&y),
            512,
            512,
        );
        let r = low.crop_rect().unwrap();
        assert_eq!((r.x, r.y + r.height), (0, 512), "{r:?}");
        // The mask seen within the crop: the same lung pixels, now relative to the crop.
        let r = m.crop_rect().unwrap();
        let inner = m.within(r);
        assert_eq!((inner.width, inner.height), (r.width, r.height));
        let b2 = inner.bounding_box().unwrap();
        let near = |u: u32, v: u32| u.abs_diff(v) <= 12;
        assert!(near(b2.x + r.x, 256) && near(b2.y + r.y, 256), "{b2:?}");
        assert!(near(b2.width, 512) && near(b2.height, 1024), "{b2:?}");
        // No lungs, no crop.
        let none = mask_with(|_, _| false, 300, 300);
        assert_eq!(none.bounding_box(), None);
        assert_eq!(none.crop_rect(), None);
    }

    #[test]
    fn decoder_output_is_half_the_input() {
        let device = Device::flex();
        let net = LungNet::new(&device);
        let y = net.forward(Tensor::zeros([2, 3, 64, 64], &device));
        assert_eq!(y.dims(), [2, 1, 32, 32]);
    }

    #[test]
    fn specks_are_removed_and_regions_counted() {
        // Two lungs and a speck.
        let m = mask_with(
            |x, y| {
                (10..50).contains(&x) && (20..100).contains(&y)
                    || (70..110).contains(&x) && (20..100).contains(&y)
                    || (x == 120 && y == 120)
            },
            256,
            256,
        );
        assert_eq!(m.regions(), 3);
        let kept = m.clone().largest_regions(2);
        assert_eq!(kept.regions(), 2);
        assert_eq!(kept.grid[120 * MASK_SIDE + 120], 0.0);
        assert_eq!(kept.grid[50 * MASK_SIDE + 20], 1.0);
    }

    #[test]
    fn shape_tells_two_lungs_from_one_side_and_none() {
        let two = mask_with(
            |x, y| {
                (14..54).contains(&x) && (20..100).contains(&y)
                    || (74..114).contains(&x) && (20..100).contains(&y)
            },
            256,
            256,
        )
        .shape();
        assert_eq!((two.regions, two.side_by_side), (2, true));
        assert!((two.balance - 1.0).abs() < 1e-6 && (two.halves - 1.0).abs() < 1e-6);
        assert!(two.implausible().is_none(), "{two:?}");
        let none = mask_with(|_, _| false, 256, 256).shape();
        assert_eq!(
            none.implausible().as_deref(),
            Some("no lung fields were found")
        );
        // Two fields one above the other in the right half: a lateral view's look.
        let stacked = mask_with(
            |x, y| (74..114).contains(&x) && ((10..60).contains(&y) || (70..120).contains(&y)),
            256,
            256,
        )
        .shape();
        assert_eq!((stacked.regions, stacked.side_by_side), (2, false));
        assert!(
            stacked
                .implausible()
                .unwrap()
                .contains("mostly on one side"),
            "{stacked:?}"
        );
        let tiny = mask_with(
            |x, y| (60..68).contains(&x) && (60..68).contains(&y),
            256,
            256,
        )
        .shape();
        assert!(
            tiny.implausible()
                .unwrap()
                .contains("cover 0 % of the image"),
            "{tiny:?}"
        );
    }

    #[test]
    fn dice_and_iou() {
        let a = [true, true, false, false];
        let b = [true, false, true, false];
        let (d, i) = dice_iou(&a, &b);
        assert!((d - 0.5).abs() < 1e-12 && (i - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(dice_iou(&[false; 3], &[false; 3]), (1.0, 1.0));
        assert_eq!(dice_iou(&a, &a), (1.0, 1.0));
    }

    #[test]
    fn share_of_cam_counts_mass_inside_the_mask() {
        // Left half of a square image is lung; the classifier sees the whole square.
        let m = mask_with(|x, _| x < MASK_SIDE / 2, 400, 400);
        let input = InputConfig {
            resize: 224,
            crop: 224,
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        let side = 8;
        let left: Vec<f32> = (0..64).map(|i| f32::from(u8::from(i % 8 < 2))).collect();
        assert_eq!(m.share_of_cam(&left, side, &input), Some(1.0));
        let right: Vec<f32> = (0..64).map(|i| f32::from(u8::from(i % 8 >= 6))).collect();
        assert_eq!(m.share_of_cam(&right, side, &input), Some(0.0));
        let even = vec![1.0f32; 64];
        let s = m.share_of_cam(&even, side, &input).unwrap();
        // Half, plus the dilation's band of 3/128 of the side.
        assert!((s - (0.5 + 3.0 / 128.0)).abs() < 0.07, "{s}");
        assert_eq!(m.share_of_cam(&[0.0; 64], side, &input), None);
    }

    #[test]
    fn crop_box_follows_the_evaluation_transform() {
        let input = InputConfig {
            resize: 256,
            crop: 224,
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        let (x0, y0, span) = crop_box(512, 1024, &input);
        assert!((span - 448.0).abs() < 1e-3);
        assert!((x0 - 32.0).abs() < 1e-3 && (y0 - 288.0).abs() < 1e-3);
    }

    #[test]
    fn file_round_trip_and_damage() {
        let device = Device::flex();
        let file = LungsFile::new(test_header(), LungNet::new(&device)).unwrap();
        let bytes = file.to_bytes();
        let back = LungsFile::from_bytes(&bytes).unwrap();
        assert_eq!(back.header, file.header);
        back.load(&device).unwrap();
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 10] ^= 1;
        let e = LungsFile::from_bytes(&bad).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        let e = crate::model_file::ModelFile::from_bytes(&bytes)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lung segmenter"), "{e}");
    }
}
