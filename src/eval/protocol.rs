//! The official test protocol: how images are read, degraded, fed to the models and turned back
//! into 8-bit images. One function per degradation, shared by `converse eval` and
//! `converse degrade`.

use std::path::{Path, PathBuf};

use anyhow::bail;
use candle_core::{Device, Tensor};
use image::DynamicImage;

use super::{blur, modcrop, numpy_rng};
use crate::image_io::resize as imresize;
use crate::image_io::{self, quantize_u8};
use crate::kernel::Kernel;

/// An 8-bit image in numpy's `(H, W, C)` order.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageU8 {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}

/// A float image in `(H, W, C)` order.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageF32 {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub data: Vec<f32>,
}

/// The images of a dataset folder, recursively, in the official order (sorted folders, sorted
/// names).
pub fn list_images(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        bail!("dataset '{}' is not a folder", dir.display())
    }
    let mut notes = vec![];
    let images = crate::plan::list(dir, true, crate::plan::Inputs::Images, None, &mut notes)?;
    for note in notes {
        eprintln!("note: {note}");
    }
    Ok(images)
}

/// OpenCV's 8-bit RGB to gray: `(4899 R + 9617 G + 1868 B + 8192) >> 14`.
fn cv_gray(r: u8, g: u8, b: u8) -> u8 {
    ((4899 * r as u32 + 9617 * g as u32 + 1868 * b as u32 + 8192) >> 14) as u8
}

/// Reads an image as the official `imread_uint(path, channels)`: 1 channel as OpenCV's
/// grayscale read, 3 as RGB (gray replicated). Alpha is dropped; 16-bit samples are scaled to 8
/// bits.
pub fn read_u8(path: &Path, channels: usize) -> anyhow::Result<ImageU8> {
    let img = image_io::decode(path, image_io::DEFAULT_MAX_PIXELS)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let is_gray = !img.color().has_color();
    let data = match channels {
        1 if is_gray => img.to_luma8().into_raw(),
        1 => img
            .to_rgb8()
            .chunks_exact(3)
            .map(|p| cv_gray(p[0], p[1], p[2]))
            .collect(),
        _ => DynamicImage::ImageRgb8(img.to_rgb8()).into_bytes(),
    };
    Ok(ImageU8 {
        height: h,
        width: w,
        channels,
        data,
    })
}

/// `uint2single`: `float32(x / 255.)`, computed in float64.
pub fn to_single(img: &ImageU8) -> ImageF32 {
    ImageF32 {
        height: img.height,
        width: img.width,
        channels: img.channels,
        data: img
            .data
            .iter()
            .map(|v| (*v as f64 / 255.0) as f32)
            .collect(),
    }
}

/// `single2uint`: clip, times 255, round (for saving degraded inputs).
pub fn to_u8(img: &ImageF32) -> ImageU8 {
    ImageU8 {
        height: img.height,
        width: img.width,
        channels: img.channels,
        data: img.data.iter().map(|v| quantize_u8(*v)).collect(),
    }
}

/// `(H, W, C)` floats to a `(1, C, H, W)` tensor.
pub fn to_tensor(img: &ImageF32, dev: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_slice(&img.data, (img.height, img.width, img.channels), dev)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .contiguous()
}

/// `tensor2uint`: a `(1, C, H, W)` tensor to 8 bits (clamp, times 255 in float32, round).
pub fn from_tensor(t: &Tensor) -> candle_core::Result<ImageU8> {
    let (_, c, h, w) = t.dims4()?;
    let data = t
        .squeeze(0)?
        .permute((1, 2, 0))?
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(quantize_u8)
        .collect();
    Ok(ImageU8 {
        height: h,
        width: w,
        channels: c,
        data,
    })
}

/// A degradation of the official test scripts.
#[derive(Debug, Clone)]
pub enum Degradation {
    /// Gray, plus `normal(0, sigma/255)` noise, no clipping.
    Denoise { sigma: f64 },
    /// Gray, through the `image` crate's JPEG encoder at `quality` ([`jpeg`]).
    Jpeg { quality: u8 },
    /// modcrop 4, then MATLAB bicubic `imresize(HR, 1/4)`.
    Sr,
    /// modcrop 8, `scipy.ndimage.convolve(img, k, mode='wrap')` on uint8, then
    /// `normal(0, sigma/255)` noise (the official sigma is 2.55).
    Deblur { kernel: Kernel, sigma: f64 },
}

/// Clean target and degraded input.
#[derive(Debug, Clone)]
pub struct Degraded {
    pub clean: ImageU8,
    pub input: ImageF32,
}

/// The SR scale of the released model.
pub const SR_SCALE: usize = 4;

impl Degradation {
    /// Channels the task reads images with.
    pub fn channels(&self) -> usize {
        match self {
            Self::Denoise { .. } | Self::Jpeg { .. } => 1,
            _ => 3,
        }
    }

    /// Pixels shaved from each side before PSNR/SSIM.
    pub fn border(&self) -> usize {
        match self {
            Self::Denoise { .. } | Self::Jpeg { .. } => 0,
            Self::Sr => SR_SCALE,
            Self::Deblur { .. } => 1,
        }
    }

    /// Degrades `img` (read with [`Self::channels`]); the noise generator is seeded with `seed`
    /// for every image, as the official scripts do.
    pub fn apply(&self, img: &ImageU8, seed: u32) -> anyhow::Result<Degraded> {
        let c = img.channels;
        match self {
            Self::Denoise { sigma } => {
                let mut input = to_single(img);
                numpy_rng::add_gaussian_noise_f32(&mut input.data, sigma / 255.0, seed);
                Ok(Degraded {
                    clean: img.clone(),
                    input,
                })
            }
            Self::Jpeg { quality } => Ok(Degraded {
                clean: img.clone(),
                input: to_single(&jpeg(img, *quality)?),
            }),
            Self::Sr => {
                let clean = cropped(img, SR_SCALE)?;
                let (h, w) = (clean.height, clean.width);
                let hr = to_single(&clean);
                let (lr, lh, lw) = imresize::imresize(&hr.data, h, w, c, 1.0 / SR_SCALE as f64);
                Ok(Degraded {
                    clean,
                    input: ImageF32 {
                        height: lh,
                        width: lw,
                        channels: c,
                        data: lr,
                    },
                })
            }
            Self::Deblur { kernel, sigma } => {
                let clean = cropped(img, 8)?;
                let (h, w) = (clean.height, clean.width);
                let blurred = ImageU8 {
                    data: blur::convolve_wrap_u8(
                        &clean.data,
                        h,
                        w,
                        c,
                        &kernel.data,
                        kernel.height,
                        kernel.width,
                    ),
                    ..clean.clone()
                };
                let mut input = to_single(&blurred);
                numpy_rng::add_gaussian_noise_f32(&mut input.data, sigma / 255.0, seed);
                Ok(Degraded { clean, input })
            }
        }
    }
}

/// `img` encoded by the `image` crate's JPEG encoder at `quality` (1 to 100) and decoded again:
/// the JPEG degradation of `degrade`, `eval` and training.
pub fn jpeg(img: &ImageU8, quality: u8) -> anyhow::Result<ImageU8> {
    let color = match img.channels {
        1 => image::ExtendedColorType::L8,
        3 => image::ExtendedColorType::Rgb8,
        c => bail!("JPEG stores 1 or 3 channels, not {c}"),
    };
    let mut bytes = vec![];
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality).encode(
        &img.data,
        img.width as u32,
        img.height as u32,
        color,
    )?;
    let decoded = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)?;
    let data = match img.channels {
        1 => decoded.to_luma8().into_raw(),
        _ => decoded.to_rgb8().into_raw(),
    };
    Ok(ImageU8 { data, ..*img })
}

/// `modcrop(img, m)`, refusing images smaller than `m x m`.
fn cropped(img: &ImageU8, m: usize) -> anyhow::Result<ImageU8> {
    let (data, height, width) = modcrop(&img.data, img.height, img.width, img.channels, m);
    if height == 0 || width == 0 {
        bail!("the image is smaller than {m}x{m}")
    }
    Ok(ImageU8 {
        height,
        width,
        channels: img.channels,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opencv_gray_weights() {
        assert_eq!(cv_gray(255, 255, 255), 255);
        assert_eq!(cv_gray(255, 0, 0), 76);
        assert_eq!(cv_gray(0, 255, 0), 150);
        assert_eq!(cv_gray(0, 0, 255), 29);
    }

    #[test]
    fn tensor_round_trip_keeps_hwc_order() {
        let img = ImageU8 {
            height: 2,
            width: 3,
            channels: 3,
            data: (0..18).map(|v| v * 10).collect(),
        };
        let t = to_tensor(&to_single(&img), &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 3, 2, 3]);
        assert_eq!(from_tensor(&t).unwrap(), img);
    }
}
