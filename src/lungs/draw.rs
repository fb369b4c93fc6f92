//! Drawing the lung fields: the outline of a mask over an image.

/// The edge of a `w`x`h` mask: the pixels inside it with a pixel outside (or the border)
/// within `radius` along a row or column. Row-major.
pub fn edge(w: u32, h: u32, radius: i64, inside: impl Fn(u32, u32) -> bool) -> Vec<bool> {
    let at = |x: i64, y: i64| {
        x >= 0 && y >= 0 && x < w as i64 && y < h as i64 && inside(x as u32, y as u32)
    };
    let mut out = Vec::with_capacity((w * h) as usize);
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            out.push(at(x, y) && (-radius..=radius).any(|d| !at(x + d, y) || !at(x, y + d)));
        }
    }
    out
}

/// The outline of a crop mask (`on_crop`'s values, `w`x`h`): the mask's pixels within one
/// pixel of its edge. Row-major.
pub fn outline(crop_mask: &[f32], w: u32, h: u32) -> Vec<bool> {
    edge(w, h, 1, |x, y| crop_mask[(y * w + x) as usize] > 0.5)
}

/// Draws the outline of a crop mask (`on_crop`'s values, the view's size) onto an overlay.
pub fn draw_outline(img: &mut image::RgbImage, crop_mask: &[f32]) {
    let w = img.width();
    for (i, _) in outline(crop_mask, w, img.height())
        .iter()
        .enumerate()
        .filter(|(_, e)| **e)
    {
        img.put_pixel(i as u32 % w, i as u32 / w, image::Rgb([255, 255, 255]));
    }
}
