//! VAE output → RGB8, and PNG encoding.

use std::io::Cursor;

use image::error::{DecodingError, ImageFormatHint};
use image::{
    DynamicImage, ImageDecoder, ImageEncoder, ImageError, ImageFormat, ImageReader, Limits,
};
use ndarray::Array4;

/// Largest width or height [`RgbImage::from_png`] accepts: far beyond any SD1.5 output.
pub const MAX_PNG_SIDE: u32 = 16384;

/// Most bytes [`RgbImage::from_png`] may allocate for pixels: the decoded image and the RGB8 copy
/// made from it together.
pub const MAX_PNG_ALLOC: u64 = 256 * 1024 * 1024;

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

    /// Decodes a PNG (any colour type is converted to RGB8); an image over [`MAX_PNG_SIDE`] or
    /// [`MAX_PNG_ALLOC`] is an [`ImageError::Limits`] error, found from the header alone.
    pub fn from_png(bytes: &[u8]) -> Result<Self, ImageError> {
        // The header is untrusted: a few bytes can declare 100000×100000 pixels, and image's
        // default limits (512 MiB, no size limit) still let the RGB8 conversion triple that.
        check_palette_length(bytes)?;
        let mut limits = Limits::default();
        limits.max_image_width = Some(MAX_PNG_SIDE);
        limits.max_image_height = Some(MAX_PNG_SIDE);
        limits.max_alloc = Some(MAX_PNG_ALLOC);
        let mut reader = ImageReader::with_format(Cursor::new(bytes), ImageFormat::Png);
        reader.limits(limits.clone());
        let decoder = reader.into_decoder()?;
        let (width, height) = decoder.dimensions();
        // Both buffers are reserved before either exists, so an oversized image costs nothing.
        limits.reserve(decoder.total_bytes())?;
        limits.reserve(u64::from(width) * u64::from(height) * 3)?;
        let img = DynamicImage::from_decoder(decoder)?.into_rgb8();
        Ok(Self {
            width: img.width(),
            height: img.height(),
            pixels: img.into_raw(),
        })
    }
}

/// Rejects a PLTE chunk whose length is not a multiple of 3 (the spec requires RGB triples):
/// png 0.18.1 accepts it and then panics expanding the palette (image-rs/image-png#694, found by
/// `fuzz/fuzz_targets/png.rs`). Only walks the chunk headers; everything else is the decoder's job,
/// so a malformed or truncated chunk list just ends the walk.
fn check_palette_length(bytes: &[u8]) -> Result<(), ImageError> {
    let mut rest = bytes.get(8..).unwrap_or_default();
    while let (Some(len), Some(kind)) = (rest.get(..4), rest.get(4..8)) {
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        if kind == b"PLTE" && len % 3 != 0 {
            return Err(ImageError::Decoding(DecodingError::new(
                ImageFormatHint::Exact(ImageFormat::Png),
                format!("PLTE chunk of {len} bytes is not a whole number of RGB entries"),
            )));
        }
        if kind == b"IEND" {
            break;
        }
        // length + type + data + CRC
        let next = usize::try_from(len).map_or(usize::MAX, |l| l.saturating_add(12));
        rest = rest.get(next..).unwrap_or_default();
    }
    Ok(())
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

    /// A PNG of the given chunks (lengths and CRCs filled in).
    fn png_of(chunks: &[(&[u8; 4], &[u8])]) -> Vec<u8> {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in chunks {
            png.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let start = png.len();
            png.extend_from_slice(*kind);
            png.extend_from_slice(data);
            let crc = crc32(&png[start..]);
            png.extend_from_slice(&crc.to_be_bytes());
        }
        png
    }

    fn ihdr(width: u32, height: u32, colour: u8) -> Vec<u8> {
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, colour, 0, 0, 0]);
        ihdr
    }

    /// A PNG declaring `width`×`height` 8-bit `colour` whose pixel data is one empty zlib
    /// stream: the header parses, decoding then runs out of data.
    fn header_only_png(width: u32, height: u32, colour: u8) -> Vec<u8> {
        png_of(&[
            (b"IHDR", &ihdr(width, height, colour)),
            (b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]),
            (b"IEND", &[]),
        ])
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
            }
        }
        !crc
    }

    #[test]
    fn oversized_headers_are_refused_before_decoding() {
        // Over MAX_PNG_SIDE in one direction, and within it but over MAX_PNG_ALLOC: a 10000²
        // greyscale image is 100 MB decoded but 300 MB as RGB8.
        for (w, h, colour) in [
            (100_000, 100_000, 6),
            (MAX_PNG_SIDE + 1, 1, 0),
            (10_000, 10_000, 0),
        ] {
            match RgbImage::from_png(&header_only_png(w, h, colour)) {
                Err(image::ImageError::Limits(_)) => {}
                other => panic!("{w}x{h}: expected a limits error, got {other:?}"),
            }
        }
        // A header within the limits gets as far as the (missing) pixel data.
        match RgbImage::from_png(&header_only_png(64, 64, 2)) {
            Err(image::ImageError::Limits(e)) => panic!("64x64 refused by limits: {e}"),
            Err(_) => {}
            Ok(img) => panic!("decoded an image with no pixel data: {img:?}"),
        }
    }

    #[test]
    fn palette_not_in_rgb_triples_is_an_error_not_a_panic() {
        // 1×1 palette image, pixel index 0 (zlib of filter byte 0 + index 0).
        let idat = [120, 156, 99, 96, 0, 0, 0, 2, 0, 1];
        let with_palette = |plte: &[u8]| {
            png_of(&[
                (b"IHDR", &ihdr(1, 1, 3)),
                (b"PLTE", plte),
                (b"IDAT", &idat),
                (b"IEND", &[]),
            ])
        };
        let ok = RgbImage::from_png(&with_palette(&[10, 20, 30])).unwrap();
        assert_eq!(ok.pixels, [10, 20, 30]);
        for len in [4, 5, 28] {
            let err = RgbImage::from_png(&with_palette(&vec![7; len])).unwrap_err();
            assert!(err.to_string().contains("PLTE chunk of"), "{len}: {err}");
        }
    }
}
