//! A large test photo from small ones: a mosaic of the images of a folder (sorted by name, each
//! centre-cropped to a square cell, enlarged first when smaller, mirrored on every second pass
//! through the folder), cut to `W x H`. The 2 MP and 12 MP figures of docs/performance.md use
//! it on Set14:
//!
//! ```sh
//! cargo run --release --example mosaic -- $CONVERSE_SHARED/testsets/set14 1632 1224 photo2mp.png
//! cargo run --release --example mosaic -- $CONVERSE_SHARED/testsets/set14 4000 3000 photo12mp.png 500
//! ```

use anyhow::{bail, Context};
use image::imageops::{self, FilterType};
use image::RgbImage;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, w, h, out, rest @ ..] = args.as_slice() else {
        bail!("usage: mosaic DIR W H OUT [CELL (default 408)]");
    };
    let (w, h): (u32, u32) = (w.parse()?, h.parse()?);
    let cell: u32 = rest.first().map_or(Ok(408), |c| c.parse())?;
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading '{dir}'"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        bail!("no PNG images in '{dir}'");
    }
    let tiles: Vec<RgbImage> = paths
        .iter()
        .map(|p| {
            let im = image::open(p).with_context(|| format!("reading '{}'", p.display()))?;
            let im = im.to_rgb8();
            let (iw, ih) = im.dimensions();
            let f = (cell as f64 / iw.min(ih) as f64).max(1.0);
            let (sw, sh) = ((iw as f64 * f).ceil() as u32, (ih as f64 * f).ceil() as u32);
            let im = if f > 1.0 {
                imageops::resize(&im, sw, sh, FilterType::Lanczos3)
            } else {
                im
            };
            let (x, y) = ((sw - cell) / 2, (sh - cell) / 2);
            Ok(imageops::crop_imm(&im, x, y, cell, cell).to_image())
        })
        .collect::<anyhow::Result<_>>()?;
    let mut canvas = RgbImage::new(w, h);
    let (cols, rows) = (w.div_ceil(cell), h.div_ceil(cell));
    for k in 0..(cols * rows) as usize {
        let mut t = tiles[k % tiles.len()].clone();
        if (k / tiles.len()) % 2 == 1 {
            imageops::flip_horizontal_in_place(&mut t);
        }
        let (x, y) = ((k as u32 % cols) * cell, (k as u32 / cols) * cell);
        imageops::replace(&mut canvas, &t, x as i64, y as i64);
    }
    canvas
        .save(out)
        .with_context(|| format!("writing '{out}'"))?;
    println!(
        "{out}: {w}x{h}, {} cells of {cell} px from '{dir}'",
        cols * rows
    );
    Ok(())
}
