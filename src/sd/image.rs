//! VAE output → RGB8, and PNG encoding.

use std::io::Cursor;

use image::ImageEncoder;
use ndarray::Array4;

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `height * width * 3` bytes.
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// Encodes as PNG.
    pub fn to_png(&self) -> Result<Vec<u8>, image::ImageError> {
        let mut out = Cursor::new(Vec::new());
        image::codecs::png::PngEncoder::new(&mut out).write_image(
            &self.pixels,
            self.width,
            self.height,
            image::ExtendedColorType::Rgb8,
        )?;
        Ok(out.into_inner())
    }

    /// Decodes a PNG (any colour type is converted to RGB8).
    pub fn from_png(bytes: &[u8]) -> Result<Self, image::ImageError> {
        let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png)?.to_rgb8();
        Ok(Self {
            width: img.width(),
            height: img.height(),
            pixels: img.into_raw(),
        })
    }
}

/// The first image of a `[n, 3, H, W]` VAE output as RGB8, exactly as diffusers converts it:
/// `clip(x / 2 + 0.5, 0, 1)`, then `(x * 255).round()` in float32 with numpy's round-half-to-even.
/// (Truncating instead of rounding, as some ports do, is off by one level on about half the pixels.)
pub fn latents_to_rgb(decoded: &Array4<f32>) -> RgbImage {
    let (_, _, h, w) = decoded.dim();
    let mut pixels = Vec::with_capacity(h * w * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let v = (decoded[[0, c, y, x]] / 2.0 + 0.5).clamp(0.0, 1.0);
                pixels.push((v * 255.0).round_ties_even() as u8);
            }
        }
    }
    RgbImage {
        width: w as u32,
        height: h as u32,
        pixels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_half_to_even_like_numpy() {
        // x chosen so that (x/2+0.5)*255 lands on .5 exactly: 0.5*255 = 127.5 → 128 (even), and
        // clip bounds map to 0 and 255.
        let mut a = Array4::<f32>::zeros((1, 3, 1, 3));
        a[[0, 0, 0, 0]] = 0.0; // 127.5 → 128
        a[[0, 0, 0, 1]] = -5.0; // clipped → 0
        a[[0, 0, 0, 2]] = 5.0; // clipped → 255
        let img = latents_to_rgb(&a);
        assert_eq!(img.pixels[0], 128);
        assert_eq!(img.pixels[3], 0);
        assert_eq!(img.pixels[6], 255);
    }

    #[test]
    fn png_round_trip() {
        let img = RgbImage {
            width: 2,
            height: 1,
            pixels: vec![1, 2, 3, 250, 251, 252],
        };
        let back = RgbImage::from_png(&img.to_png().unwrap()).unwrap();
        assert_eq!(back, img);
    }
}
