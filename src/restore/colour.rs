//! Colour handling: how a picture's planes meet a model's channels. A gray model runs a colour
//! picture plane by plane (or its luma, when gray output is asked for); an RGB model runs a
//! gray picture as RGB and writes it gray. Alpha is passed through, resized with the colour.

use crate::image_io::resize::imresize;
use crate::image_io::Picture;
use crate::models::ModelKind;

/// Model runs a picture with `channels` colour channels takes by its colour: three for a
/// colour picture on a gray model (unless `gray` output is asked for), else one.
pub fn runs(kind: ModelKind, channels: usize, gray: bool) -> u64 {
    if kind.info().channels == 1 && channels == 3 && !gray {
        3
    } else {
        1
    }
}

/// Restores `pic` with `run`, which takes `c` planes of the picture's size and returns `c`
/// planes `scale` times larger. Colour and depth follow the input (gray stays gray), except
/// that `gray` asks a gray model for the luma of a colour picture.
pub fn restore(
    pic: &Picture,
    kind: ModelKind,
    gray: bool,
    run: impl Fn(Vec<f32>, usize) -> anyhow::Result<Vec<f32>>,
) -> anyhow::Result<Picture> {
    let (h, w) = (pic.height, pic.width);
    let n = h * w;
    let s = kind.scale();
    let gray_model = kind.info().channels == 1;
    let (planes, out_channels): (Vec<Vec<f32>>, usize) = match (gray_model, pic.channels) {
        (true, 1) => (vec![run(pic.color.clone(), 1)?], 1),
        (true, _) if gray => (vec![run(luma(&pic.color, n), 1)?], 1),
        (true, _) => (
            (0..3)
                .map(|c| run(pic.plane(c).to_vec(), 1))
                .collect::<anyhow::Result<_>>()?,
            3,
        ),
        (false, 1) => (vec![luma(&run(pic.color.repeat(3), 3)?, n * s * s)], 1),
        (false, _) => (vec![run(pic.color.clone(), 3)?], 3),
    };
    let alpha = pic.alpha.as_ref().map(|a| {
        if s == 1 {
            a.clone()
        } else {
            let (up, _, _) = imresize(a, h, w, 1, s as f64);
            up.into_iter().map(|v| v.clamp(0.0, 1.0)).collect()
        }
    });
    Ok(Picture {
        width: w * s,
        height: h * s,
        channels: out_channels,
        color: planes.concat(),
        alpha,
        depth: pic.depth,
    })
}

/// ITU-R BT.601 luma of planar RGB with `n` pixels per plane.
fn luma(rgb: &[f32], n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| 0.299 * rgb[i] + 0.587 * rgb[n + i] + 0.114 * rgb[2 * n + i])
        .collect()
}
