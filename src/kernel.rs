//! Blur kernels for `--kernel`: `.npy` files (float32 or float64, 2-D, as the official
//! `blur_kernels/`), grayscale images of the PSF (8 or 16 bit), text matrices (whitespace- or
//! comma-separated, `#` comments), and the generators `gaussian:SIGMA` and `motion:LENGTH,ANGLE`.
//!
//! Orientation: a kernel `k` blurs as `scipy.ndimage.convolve(image, k)`, a true convolution. A
//! kernel written as a correlation filter must be flipped (`--kernel-flip`).

use std::path::Path;

use anyhow::{anyhow, bail, Context};

/// Side of the kernels Converse-USRNet takes.
pub const MODEL_KERNEL_SIZE: usize = 7;
/// Largest kernel file read, in bytes.
pub const MAX_KERNEL_FILE_BYTES: u64 = 1 << 20;

/// A 2-D kernel, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Kernel {
    pub height: usize,
    pub width: usize,
    pub data: Vec<f64>,
}

impl Kernel {
    /// The kernel as the `(1, 1, h, w)` float32 tensor the models take.
    pub fn to_tensor(&self, dev: &candle_core::Device) -> candle_core::Result<candle_core::Tensor> {
        let v: Vec<f32> = self.data.iter().map(|v| *v as f32).collect();
        candle_core::Tensor::from_vec(v, (1, 1, self.height, self.width), dev)
    }

    pub fn new(height: usize, width: usize, data: Vec<f64>) -> anyhow::Result<Self> {
        if height == 0 || width == 0 || data.len() != height * width {
            bail!("a kernel needs at least one value (got {height}x{width})")
        }
        Ok(Self {
            height,
            width,
            data,
        })
    }

    /// Rotated by 180 degrees: turns a correlation filter into a convolution kernel.
    pub fn flipped(&self) -> Self {
        Self {
            data: self.data.iter().rev().copied().collect(),
            ..self.clone()
        }
    }

    /// Checks the values: finite, non-negative, with a finite sum above 0, which it returns.
    /// Every value divided by that sum is then finite too, in 0..=1.
    pub fn checked_sum(&self) -> anyhow::Result<f64> {
        if let Some(v) = self.data.iter().find(|v| !v.is_finite()) {
            bail!("the kernel holds a non-finite value ({v})")
        }
        if let Some(v) = self.data.iter().find(|v| **v < 0.0) {
            bail!("the kernel holds a negative value ({v}); a blur kernel is non-negative")
        }
        let sum: f64 = self.data.iter().sum();
        if !sum.is_finite() {
            bail!(
                "the kernel's values are too large: their sum overflows ({sum}); scale them down \
                 (only their ratios matter)"
            )
        }
        if sum <= 0.0 {
            bail!("the kernel sums to {sum}; it must sum to more than 0")
        }
        Ok(sum)
    }

    /// Checks the values ([`Self::checked_sum`]) and normalises to sum 1.
    pub fn normalised(&self) -> anyhow::Result<Self> {
        let sum = self.checked_sum()?;
        Ok(Self {
            data: self.data.iter().map(|v| v / sum).collect(),
            ..self.clone()
        })
    }

    /// Normalised and centred in the 7x7 frame the model takes.
    pub fn for_model(&self) -> anyhow::Result<Self> {
        let (h, w, n) = (self.height, self.width, MODEL_KERNEL_SIZE);
        if h > n || w > n || h % 2 == 0 || w % 2 == 0 {
            bail!(
                "the kernel is {h}x{w}; the model takes {n}x{n}: give an odd-sized kernel of at \
                 most {n}x{n} (smaller ones are centred in a {n}x{n} frame)"
            )
        }
        let k = self.normalised()?;
        let mut data = vec![0.0; n * n];
        let (r0, c0) = ((n - h) / 2, (n - w) / 2);
        for i in 0..h {
            data[(r0 + i) * n + c0..(r0 + i) * n + c0 + w]
                .copy_from_slice(&k.data[i * w..(i + 1) * w]);
        }
        Self::new(n, n, data)
    }
}

/// Reads a kernel from a file or a generator spec, unnormalised but checked
/// ([`Kernel::checked_sum`]): a bad kernel is refused here, with the file's name, for every
/// command.
pub fn load(spec: &str) -> anyhow::Result<Kernel> {
    if let Some(args) = spec.strip_prefix("gaussian:") {
        let sigma: f64 = args
            .trim()
            .parse()
            .map_err(|_| anyhow!("gaussian:SIGMA needs a number, got `{args}`"))?;
        return gaussian(sigma);
    }
    if let Some(args) = spec.strip_prefix("motion:") {
        let parts: Vec<&str> = args.split(',').map(str::trim).collect();
        let nums: Option<Vec<f64>> = parts.iter().map(|p| p.parse().ok()).collect();
        return match nums.as_deref() {
            Some(&[len, angle]) => motion(len, angle),
            _ => bail!("motion:LENGTH,ANGLE needs two numbers, got `{args}`"),
        };
    }
    let path = Path::new(spec);
    let meta = std::fs::metadata(path).with_context(|| {
        format!("cannot read kernel '{spec}' (a file, or gaussian:SIGMA or motion:LENGTH,ANGLE)")
    })?;
    if meta.is_dir() {
        bail!("kernel '{spec}' is a folder, not a file")
    }
    if meta.is_file() && meta.len() > MAX_KERNEL_FILE_BYTES {
        bail!(
            "kernel file '{spec}' is {} bytes, over the fixed limit of {MAX_KERNEL_FILE_BYTES} \
             bytes for kernels (the model takes 7x7: crop the kernel to its support)",
            meta.len()
        )
    }
    let bytes = crate::files::read_regular(path, MAX_KERNEL_FILE_BYTES)
        .with_context(|| format!("cannot read kernel '{spec}'"))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    let k = match ext.as_str() {
        "npy" => parse_npy(&bytes),
        "png" | "jpg" | "jpeg" | "bmp" | "tif" | "tiff" | "webp" => parse_image(&bytes),
        _ => std::str::from_utf8(&bytes)
            .map_err(|_| anyhow!("not a text file"))
            .and_then(parse_text),
    };
    k.and_then(|k| k.checked_sum().map(|_| k))
        .with_context(|| format!("kernel '{spec}'"))
}

/// The kernels `converse finetune --task deblur` trains on when none is given: isotropic
/// Gaussians and linear motion blurs in the 7x7 frame the models take.
pub const STANDARD_SET: [&str; 8] = [
    "gaussian:0.8",
    "gaussian:1.4",
    "gaussian:2.0",
    "gaussian:2.6",
    "motion:5,0",
    "motion:7,45",
    "motion:7,90",
    "motion:6,135",
];

/// A 7x7 isotropic Gaussian, as MATLAB's `fspecial('gaussian', 7, sigma)`.
pub fn gaussian(sigma: f64) -> anyhow::Result<Kernel> {
    if !(sigma.is_finite() && sigma > 0.0) {
        bail!("gaussian:SIGMA needs a positive sigma, got {sigma}")
    }
    let n = MODEL_KERNEL_SIZE;
    let c = (n / 2) as f64;
    let data = (0..n * n)
        .map(|i| {
            let (y, x) = ((i / n) as f64 - c, (i % n) as f64 - c);
            (-(x * x + y * y) / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    Kernel::new(n, n, data)?.normalised()
}

/// A 7x7 linear motion blur: a segment of `length` pixels through the centre at `angle` degrees
/// (counter-clockwise from the x axis), each pixel weighted by the length of segment it holds.
pub fn motion(length: f64, angle: f64) -> anyhow::Result<Kernel> {
    let n = MODEL_KERNEL_SIZE;
    if !(length.is_finite() && length > 0.0 && length <= n as f64 && angle.is_finite()) {
        bail!(
            "motion:LENGTH,ANGLE needs 0 < LENGTH <= {n} and a finite ANGLE, got {length},{angle}"
        )
    }
    let c = (n / 2) as f64;
    let (dx, dy) = (angle.to_radians().cos(), -angle.to_radians().sin());
    let mut data = vec![0.0; n * n];
    let steps = 4096;
    for s in 0..steps {
        let t = ((s as f64 + 0.5) / steps as f64 - 0.5) * length;
        let (x, y) = ((c + t * dx).round(), (c + t * dy).round());
        if (0.0..n as f64).contains(&x) && (0.0..n as f64).contains(&y) {
            data[y as usize * n + x as usize] += 1.0;
        }
    }
    Kernel::new(n, n, data)?.normalised()
}

/// A `.npy` array: float32 or float64, 2-D, C or Fortran order.
pub fn parse_npy(bytes: &[u8]) -> anyhow::Result<Kernel> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("not a .npy file (bad magic)")
    }
    let (header_len, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => bail!("unsupported .npy version {v}"),
    };
    let header = bytes
        .get(start..start.saturating_add(header_len))
        .ok_or_else(|| anyhow!("truncated .npy header"))?;
    let header = std::str::from_utf8(header).map_err(|_| anyhow!("bad .npy header"))?;
    let field = |key: &str| -> anyhow::Result<&str> {
        let at = header
            .find(&format!("'{key}'"))
            .ok_or_else(|| anyhow!(".npy header has no '{key}'"))?;
        let rest = header[at + key.len() + 2..].trim_start();
        Ok(rest.strip_prefix(':').unwrap_or(rest).trim_start())
    };
    let descr = field("descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or_else(|| anyhow!("bad .npy dtype"))?;
    let fortran = field("fortran_order")?.starts_with("True");
    let shape = field("shape")?;
    let shape = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| anyhow!("bad .npy shape"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| anyhow!("bad .npy shape `{shape}`")))
        .collect::<anyhow::Result<_>>()?;
    let &[h, w] = dims.as_slice() else {
        bail!(
            "the array has {} dimensions ({dims:?}); a kernel has 2 (save a 2-D array, e.g. \
             `np.save(f, k.squeeze())`)",
            dims.len()
        )
    };
    let (size, big) = match descr {
        "<f8" | "=f8" => (8, false),
        ">f8" => (8, true),
        "<f4" | "=f4" => (4, false),
        ">f4" => (4, true),
        other => bail!("the array's dtype is {other}; a kernel must be float32 or float64"),
    };
    let n = h.checked_mul(w).ok_or_else(|| anyhow!("bad .npy shape"))?;
    let data = &bytes[start + header_len..];
    if Some(data.len()) != n.checked_mul(size) {
        bail!(
            "the array data is {} bytes, its shape {h}x{w} needs {}",
            data.len(),
            n as u128 * size as u128
        )
    }
    let values: Vec<f64> = data
        .chunks_exact(size)
        .map(|c| match (size, big) {
            (8, false) => f64::from_le_bytes(c.try_into().expect("8 bytes")),
            (8, true) => f64::from_be_bytes(c.try_into().expect("8 bytes")),
            (_, false) => f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64,
            (_, true) => f32::from_be_bytes(c.try_into().expect("4 bytes")) as f64,
        })
        .collect();
    let values = if fortran {
        (0..n).map(|i| values[(i % w) * h + i / w]).collect()
    } else {
        values
    };
    Kernel::new(h, w, values)
}

/// A text matrix: one row per line, values separated by whitespace or commas.
pub fn parse_text(text: &str) -> anyhow::Result<Kernel> {
    let mut rows: Vec<Vec<f64>> = vec![];
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let row = line
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<f64>()
                    .map_err(|_| anyhow!("line {}: `{s}` is not a number", i + 1))
            })
            .collect::<anyhow::Result<Vec<f64>>>()?;
        rows.push(row);
    }
    let h = rows.len();
    if h == 0 {
        bail!("no numbers found")
    }
    let w = rows[0].len();
    if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != w) {
        bail!(
            "row {} has {} values, the first row has {w}",
            i + 1,
            r.len()
        )
    }
    Kernel::new(h, w, rows.concat())
}

/// A grayscale image of the PSF (8 or 16 bit), from the file's bytes.
pub fn parse_image(bytes: &[u8]) -> anyhow::Result<Kernel> {
    let img = crate::image_io::decode_bytes(bytes, MAX_KERNEL_FILE_BYTES)?;
    let pic = crate::image_io::to_picture(&img);
    if pic.channels != 1 {
        bail!("a PSF image must be grayscale")
    }
    Kernel::new(
        pic.height,
        pic.width,
        pic.color.iter().map(|v| *v as f64).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut h = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((h.len() as u16).to_le_bytes());
        b.extend(h.as_bytes());
        b.extend(data);
        b
    }

    #[test]
    fn npy_f64_f32_and_fortran_order() {
        let vals = [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0];
        let le: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let k = parse_npy(&npy("<f8", false, "(2, 3)", &le)).unwrap();
        assert_eq!((k.height, k.width, k.data.as_slice()), (2, 3, &vals[..]));
        // Fortran order: column-major storage of the same matrix.
        let cm: Vec<u8> = [1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let k = parse_npy(&npy("<f4", true, "(2, 3)", &cm)).unwrap();
        assert_eq!(k.data, vals);
        let e = parse_npy(&npy("<i8", false, "(2, 3)", &le)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the array's dtype is <i8; a kernel must be float32 or float64"
        );
        let e = parse_npy(&npy("<f8", false, "(1, 2, 3)", &le)).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("the array has 3 dimensions ([1, 2, 3]); a kernel has 2"));
        let e = parse_npy(&npy("<f8", false, "(2, 3)", &le[..40])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the array data is 40 bytes, its shape 2x3 needs 48"
        );
        assert!(parse_npy(b"hello").is_err());
        // A shape whose byte size overflows is refused (it used to wrap, to 0 bytes here).
        let e = parse_npy(&npy("<f8", false, "(2305843009213693952, 1)", &[])).unwrap_err();
        assert!(
            e.to_string().starts_with("the array data is 0 bytes"),
            "{e}"
        );
    }

    #[test]
    fn text_matrices() {
        let k = parse_text("# psf\n1, 2 ,3\n4\t5 6\n\n").unwrap();
        assert_eq!((k.height, k.width), (2, 3));
        assert_eq!(k.data, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(
            parse_text("1 2\n3").unwrap_err().to_string(),
            "row 2 has 1 values, the first row has 2"
        );
        assert_eq!(
            parse_text("1 x").unwrap_err().to_string(),
            "line 1: `x` is not a number"
        );
    }

    #[test]
    fn model_kernels_are_checked_normalised_and_centred() {
        let k = Kernel::new(3, 3, vec![0., 0., 0., 0., 2., 2., 0., 0., 0.]).unwrap();
        let m = k.for_model().unwrap();
        assert_eq!((m.height, m.width), (7, 7));
        assert_eq!(m.data[3 * 7 + 3], 0.5);
        assert_eq!(m.data[3 * 7 + 4], 0.5);
        assert_eq!(m.data.iter().sum::<f64>(), 1.0);
        assert_eq!(k.flipped().data[3], 2.0);
        let bad = |d: Vec<f64>| {
            Kernel::new(1, d.len(), d)
                .unwrap()
                .normalised()
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            bad(vec![1.0, f64::NAN]),
            "the kernel holds a non-finite value (NaN)"
        );
        assert_eq!(
            bad(vec![1.0, f64::INFINITY]),
            "the kernel holds a non-finite value (inf)"
        );
        assert_eq!(
            bad(vec![0.0, 0.0]),
            "the kernel sums to 0; it must sum to more than 0"
        );
        assert!(bad(vec![1.0, -0.5]).starts_with("the kernel holds a negative value (-0.5)"));
        // Finite values whose sum overflows; tiny (subnormal) ones still normalise exactly.
        let overflow = "the kernel's values are too large: their sum overflows (inf); scale them \
                        down (only their ratios matter)";
        assert_eq!(bad(vec![1e308; 3]), overflow);
        assert_eq!(bad(vec![f64::MAX / 4.0; 9]), overflow);
        let tiny = Kernel::new(1, 4, vec![5e-324, 0.0, 1e-323, 5e-324]).unwrap();
        assert_eq!(tiny.normalised().unwrap().data, [0.25, 0.0, 0.5, 0.25]);
        assert!(parse_text("1e308 1e308 1e308")
            .unwrap()
            .checked_sum()
            .is_err());
        let e = Kernel::new(8, 8, vec![1.0; 64])
            .unwrap()
            .for_model()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("the kernel is 8x8; the model takes 7x7"),
            "{e}"
        );
        assert!(Kernel::new(9, 9, vec![1.0; 81])
            .unwrap()
            .for_model()
            .is_err());
    }

    #[test]
    fn generators() {
        let g = load("gaussian:1.6").unwrap();
        assert!((g.data.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(g.data[24] > g.data[23] && (g.data[23] - g.data[25]).abs() < 1e-15);
        let m = load("motion:5,0").unwrap();
        // A horizontal segment of 5 pixels through the centre row.
        let row: Vec<f64> = m.data[21..28].to_vec();
        assert!(
            row[1..6].iter().all(|v| *v > 0.15) && row[0] == 0.0 && row[6] == 0.0,
            "{row:?}"
        );
        assert!((m.data.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let v = load("motion:3,90").unwrap();
        assert!(v.data[2 * 7 + 3] > 0.3 && v.data[4 * 7 + 3] > 0.3);
        assert!(load("gaussian:-1").is_err());
        assert!(load("motion:9,0").is_err());
        assert!(load("motion:3").is_err());
    }
}
