//! Reading and writing images: PNG, JPEG, BMP, TIFF and WebP.
//!
//! Bit depth comes from the decoded image (16-bit in, 16-bit out), alpha is kept apart from the
//! colour planes, JPEG EXIF orientation is applied, and decoding refuses images over a pixel
//! limit before allocating them. Writing goes through a temporary file in the destination folder,
//! then a rename.

use std::io::{BufRead, Seek};
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

pub mod resize;

/// File extensions of the formats this build reads (any case).
pub const EXTENSIONS: [&str; 7] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp"];

/// Whether `path` has the extension of an image this build reads.
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Default decoding limit: 16384 x 16384 pixels.
pub const DEFAULT_MAX_PIXELS: u64 = 16384 * 16384;

/// Sample depth of an image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitDepth {
    Eight,
    Sixteen,
}

/// A decoded image: planar colour in [0, 1], and alpha apart.
#[derive(Debug, Clone, PartialEq)]
pub struct Picture {
    pub width: usize,
    pub height: usize,
    /// 1 (gray) or 3 (RGB).
    pub channels: usize,
    /// `channels` planes of `height x width`, values in [0, 1].
    pub color: Vec<f32>,
    /// `height x width` in [0, 1], if the file had alpha.
    pub alpha: Option<Vec<f32>>,
    pub depth: BitDepth,
}

impl Picture {
    pub fn plane(&self, c: usize) -> &[f32] {
        let n = self.width * self.height;
        &self.color[c * n..(c + 1) * n]
    }
}

/// A reader of the image file `path`, its format guessed from the content; anything but a
/// regular file is refused before it is read.
fn open_image(path: &Path) -> anyhow::Result<ImageReader<std::io::BufReader<std::fs::File>>> {
    let file = crate::files::open_regular(path)
        .with_context(|| format!("cannot read '{}'", path.display()))?;
    let mut reader = ImageReader::new(std::io::BufReader::new(file));
    // The extension's format unless the content says otherwise (as `ImageReader::open`).
    if let Ok(f) = ImageFormat::from_path(path) {
        reader.set_format(f);
    }
    reader
        .with_guessed_format()
        .with_context(|| format!("cannot read '{}'", path.display()))
}

/// Decodes `path`, applying EXIF orientation, refusing more than `max_pixels` pixels.
pub fn decode(path: &Path, max_pixels: u64) -> anyhow::Result<DynamicImage> {
    decode_reader(
        open_image(path)?,
        max_pixels,
        " (raise it with --max-pixels)",
    )
    .with_context(|| format!("'{}'", path.display()))
}

/// Width, height and colour channels (1 or 3) of `path` after EXIF orientation, from its header
/// only (no pixels are decoded).
pub fn probe(path: &Path, max_pixels: u64) -> anyhow::Result<(usize, usize, usize)> {
    let reader = open_image(path)?;
    let probe = || -> anyhow::Result<_> {
        let mut decoder = checked_decoder(reader, max_pixels, " (raise it with --max-pixels)")?;
        let (w, h) = decoder.dimensions();
        use image::metadata::Orientation::*;
        let turned = matches!(
            decoder.orientation().unwrap_or(NoTransforms),
            Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH
        );
        let channels = if decoder.color_type().has_color() {
            3
        } else {
            1
        };
        let (w, h) = (w as usize, h as usize);
        Ok(if turned {
            (h, w, channels)
        } else {
            (w, h, channels)
        })
    };
    probe().with_context(|| format!("'{}'", path.display()))
}

/// [`decode`] from bytes in memory (the format is guessed from the content), for small images
/// such as PSFs: the pixel limit is fixed.
pub fn decode_bytes(bytes: &[u8], max_pixels: u64) -> anyhow::Result<DynamicImage> {
    let reader = ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format()?;
    decode_reader(reader, max_pixels, "")
}

/// The decoder of `reader`, its allocations capped, once its header has passed the checks:
/// a supported format, not empty, at most `max_pixels` (`hint` follows that error).
fn checked_decoder<'a, R: BufRead + Seek + 'a>(
    mut reader: ImageReader<R>,
    max_pixels: u64,
    hint: &str,
) -> anyhow::Result<impl ImageDecoder + 'a> {
    // The pixel limit is checked below; let the decoder allocate what that allows (RGBA, 16-bit).
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(limits);
    if reader.format().is_none() {
        bail!("not an image in a supported format (PNG, JPEG, BMP, TIFF, WebP)")
    }
    let decoder = reader
        .into_decoder()
        .map_err(|e| anyhow!("not a valid image: {e}"))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        bail!("the image is empty ({w}x{h} pixels)")
    }
    if u64::from(w) * u64::from(h) > max_pixels {
        bail!("the image is {w}x{h} pixels, over the limit of {max_pixels} pixels{hint}")
    }
    Ok(decoder)
}

/// Decodes with the decoder's allocations capped; `hint` follows the pixel-limit error.
fn decode_reader<R: BufRead + Seek>(
    reader: ImageReader<R>,
    max_pixels: u64,
    hint: &str,
) -> anyhow::Result<DynamicImage> {
    let mut decoder = checked_decoder(reader, max_pixels, hint)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img =
        DynamicImage::from_decoder(decoder).map_err(|e| anyhow!("not a valid image: {e}"))?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// Splits a decoded image into planar colour and alpha.
pub fn to_picture(img: &DynamicImage) -> Picture {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let color = img.color();
    let depth = if color.bytes_per_pixel() / color.channel_count() >= 2 {
        BitDepth::Sixteen
    } else {
        BitDepth::Eight
    };
    let channels = if color.has_color() { 3 } else { 1 };
    let n = w * h;
    let mut planes = vec![0f32; channels * n];
    let mut alpha = color.has_alpha().then(|| vec![0f32; n]);
    let mut put = |i: usize, px: &[f32]| {
        for c in 0..channels {
            planes[c * n + i] = px[c];
        }
        if let Some(a) = alpha.as_mut() {
            a[i] = px[channels];
        }
    };
    match depth {
        BitDepth::Eight => {
            let (buf, k) = match (channels, color.has_alpha()) {
                (1, false) => (img.to_luma8().into_raw(), 1),
                (1, true) => (img.to_luma_alpha8().into_raw(), 2),
                (_, false) => (img.to_rgb8().into_raw(), 3),
                (_, true) => (img.to_rgba8().into_raw(), 4),
            };
            let mut px = [0f32; 4];
            for (i, chunk) in buf.chunks_exact(k).enumerate() {
                for (p, v) in px.iter_mut().zip(chunk) {
                    *p = (*v as f64 / 255.0) as f32;
                }
                put(i, &px);
            }
        }
        BitDepth::Sixteen => {
            let (buf, k) = match (channels, color.has_alpha()) {
                (1, false) => (img.to_luma16().into_raw(), 1),
                (1, true) => (img.to_luma_alpha16().into_raw(), 2),
                (_, false) => (img.to_rgb16().into_raw(), 3),
                (_, true) => (img.to_rgba16().into_raw(), 4),
            };
            let mut px = [0f32; 4];
            for (i, chunk) in buf.chunks_exact(k).enumerate() {
                for (p, v) in px.iter_mut().zip(chunk) {
                    *p = (*v as f64 / 65535.0) as f32;
                }
                put(i, &px);
            }
        }
    }
    Picture {
        width: w,
        height: h,
        channels,
        color: planes,
        alpha,
        depth,
    }
}

/// Reads an image file.
pub fn read(path: &Path, max_pixels: u64) -> anyhow::Result<Picture> {
    Ok(to_picture(&decode(path, max_pixels)?))
}

/// A float in [0, 1] to 8 bits exactly as the official `tensor2uint`: clamp, times 255 in
/// float32, round half to even.
pub fn quantize_u8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round_ties_even() as u8
}

fn quantize_u16(v: f32) -> u16 {
    (v.clamp(0.0, 1.0) * 65535.0).round_ties_even() as u16
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    Jpeg,
    Bmp,
    Tiff,
    Webp,
}

impl Format {
    pub const ALL: [Format; 5] = [Self::Png, Self::Jpeg, Self::Bmp, Self::Tiff, Self::Webp];

    /// The name `--format` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpeg",
            Self::Bmp => "bmp",
            Self::Tiff => "tiff",
            Self::Webp => "webp",
        }
    }

    /// From a file extension (case-insensitive).
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "png" => Self::Png,
            "jpg" | "jpeg" => Self::Jpeg,
            "bmp" => Self::Bmp,
            "tif" | "tiff" => Self::Tiff,
            "webp" => Self::Webp,
            _ => return None,
        })
    }

    /// Whether the format stores 16-bit samples.
    pub fn has_16_bit(self) -> bool {
        matches!(self, Self::Png | Self::Tiff)
    }

    /// Whether the format stores alpha.
    pub fn has_alpha(self) -> bool {
        !matches!(self, Self::Jpeg)
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Bmp => "bmp",
            Self::Tiff => "tif",
            Self::Webp => "webp",
        }
    }

    fn image_format(self) -> ImageFormat {
        match self {
            Self::Png => ImageFormat::Png,
            Self::Jpeg => ImageFormat::Jpeg,
            Self::Bmp => ImageFormat::Bmp,
            Self::Tiff => ImageFormat::Tiff,
            Self::Webp => ImageFormat::WebP,
        }
    }
}

/// Builds the image to encode: interleaved, at the picture's depth unless the format is 8-bit.
fn to_dynamic(pic: &Picture, format: Format) -> DynamicImage {
    let (w, h) = (pic.width as u32, pic.height as u32);
    let n = pic.width * pic.height;
    let alpha = pic.alpha.as_ref().filter(|_| format.has_alpha());
    let k = pic.channels + alpha.is_some() as usize;
    let sample = |i: usize, c: usize| -> f32 {
        if c < pic.channels {
            pic.color[c * n + i]
        } else {
            alpha.map_or(1.0, |a| a[i])
        }
    };
    if pic.depth == BitDepth::Sixteen && format.has_16_bit() {
        let buf: Vec<u16> = (0..n * k)
            .map(|j| quantize_u16(sample(j / k, j % k)))
            .collect();
        match k {
            1 => DynamicImage::ImageLuma16(image::ImageBuffer::from_raw(w, h, buf).expect("size")),
            2 => DynamicImage::ImageLumaA16(image::ImageBuffer::from_raw(w, h, buf).expect("size")),
            3 => DynamicImage::ImageRgb16(image::ImageBuffer::from_raw(w, h, buf).expect("size")),
            _ => DynamicImage::ImageRgba16(image::ImageBuffer::from_raw(w, h, buf).expect("size")),
        }
    } else {
        let buf: Vec<u8> = (0..n * k)
            .map(|j| quantize_u8(sample(j / k, j % k)))
            .collect();
        match k {
            1 => DynamicImage::ImageLuma8(image::ImageBuffer::from_raw(w, h, buf).expect("size")),
            2 => DynamicImage::ImageLumaA8(image::ImageBuffer::from_raw(w, h, buf).expect("size")),
            3 => DynamicImage::ImageRgb8(image::ImageBuffer::from_raw(w, h, buf).expect("size")),
            _ => DynamicImage::ImageRgba8(image::ImageBuffer::from_raw(w, h, buf).expect("size")),
        }
    }
}

/// Writes `pic` to `dest` in `format` (JPEG at `quality`) through the one write helper
/// ([`crate::files::write_with`]): complete or not at all, replacing a file at `dest` only with
/// [`Existing::Replace`](crate::files::Existing).
pub fn write(
    pic: &Picture,
    dest: &Path,
    format: Format,
    quality: u8,
    existing: crate::files::Existing,
) -> anyhow::Result<()> {
    check_encoder_limits(format, pic.width, pic.height)
        .with_context(|| format!("cannot write '{}'", dest.display()))?;
    let img = to_dynamic(pic, format);
    let img = match format {
        // BMP and JPEG take 8-bit only; WebP's encoder takes 8-bit RGB(A) only.
        Format::Webp if pic.channels == 1 => {
            if pic.alpha.is_some() {
                DynamicImage::ImageRgba8(img.to_rgba8())
            } else {
                DynamicImage::ImageRgb8(img.to_rgb8())
            }
        }
        _ => img,
    };
    crate::files::write_with(dest, existing, |file| -> anyhow::Result<()> {
        let mut w = std::io::BufWriter::new(file);
        if format == Format::Jpeg {
            let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut w, quality);
            img.write_with_encoder(enc)?;
        } else {
            img.write_to(&mut w, format.image_format())?;
        }
        std::io::Write::flush(&mut w)?;
        Ok(())
    })
    .with_context(|| format!("cannot write '{}'", dest.display()))
}

/// The largest side each encoder takes: WebP 16383, JPEG 65535 pixels.
pub fn check_encoder_limits(format: Format, width: usize, height: usize) -> anyhow::Result<()> {
    let (name, max) = match format {
        Format::Webp => ("WebP", 16383),
        Format::Jpeg => ("JPEG", 65535),
        _ => return Ok(()),
    };
    if width > max || height > max {
        bail!("{width}x{height} is larger than {name} allows ({max} pixels a side)")
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_matches_tensor2uint() {
        assert_eq!(quantize_u8(-0.2), 0);
        assert_eq!(quantize_u8(1.7), 255);
        // 0.5 * 255 = 127.5 rounds to even.
        assert_eq!(quantize_u8(0.5), 128);
        assert_eq!(quantize_u8(2.5 / 255.0), 2);
        assert_eq!(quantize_u8(f32::NAN), 0);
    }

    #[test]
    fn round_trips_depth_and_alpha() {
        let dir = tempfile::tempdir().unwrap();
        let pic = Picture {
            width: 3,
            height: 2,
            channels: 3,
            color: (0..18).map(|i| i as f32 / 17.0).collect(),
            alpha: Some(vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
            depth: BitDepth::Sixteen,
        };
        let p = dir.path().join("a b ü.png");
        write(&pic, &p, Format::Png, 90, crate::files::Existing::Keep).unwrap();
        let back = read(&p, DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(back.depth, BitDepth::Sixteen);
        assert_eq!((back.width, back.height, back.channels), (3, 2, 3));
        for (a, b) in back.color.iter().zip(&pic.color) {
            assert!((a - b).abs() < 1e-5);
        }
        assert!(back
            .alpha
            .unwrap()
            .iter()
            .zip(pic.alpha.as_ref().unwrap())
            .all(|(a, b)| (a - b).abs() < 1e-5));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
