//! Bilinear upsampling by an integer factor, as `F.interpolate(x, scale_factor=s,
//! mode='bilinear', align_corners=False)`.

use candle_core::shape::Dim;
use candle_core::{Device, Result, Tensor, D};

/// Source taps and weights along one axis of length `n` upsampled `s` times.
fn taps(n: usize, s: usize, dev: &Device) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let (mut i0, mut i1, mut w0, mut w1) = (vec![], vec![], vec![], vec![]);
    for o in 0..n * s {
        let src = ((o as f64 + 0.5) / s as f64 - 0.5).max(0.0);
        let lo = (src.floor() as usize).min(n - 1);
        let frac = src - lo as f64;
        i0.push(lo as u32);
        i1.push((lo + 1).min(n - 1) as u32);
        w0.push(1.0 - frac);
        w1.push(frac);
    }
    let m = n * s;
    Ok((
        Tensor::from_vec(i0, m, dev)?,
        Tensor::from_vec(i1, m, dev)?,
        Tensor::from_vec(w0, m, dev)?,
        Tensor::from_vec(w1, m, dev)?,
    ))
}

fn along(x: &Tensor, s: usize, dim: usize) -> Result<Tensor> {
    let n = x.dim(dim)?;
    let (i0, i1, w0, w1) = taps(n, s, x.device())?;
    let mut shape = vec![1; x.rank()];
    shape[dim] = n * s;
    let w0 = w0.to_dtype(x.dtype())?.reshape(shape.clone())?;
    let w1 = w1.to_dtype(x.dtype())?.reshape(shape)?;
    x.index_select(&i0, dim)?
        .broadcast_mul(&w0)?
        .add(&x.index_select(&i1, dim)?.broadcast_mul(&w1)?)
}

/// Upsamples the last two dims of `x` by `scale`.
pub fn upsample_bilinear2d(x: &Tensor, scale: usize) -> Result<Tensor> {
    if scale == 0 {
        candle_core::bail!("bilinear upsampling needs a positive scale")
    }
    let h = D::Minus2.to_index(x.shape(), "upsample")?;
    along(&along(&x.contiguous()?, scale, h)?, scale, h + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_torch_on_a_ramp() {
        // torch: F.interpolate(torch.tensor([[[[0., 1., 4.]]]]), scale_factor=2, mode='bilinear')
        let x = Tensor::new(&[[[[0f64, 1., 4.]]]], &Device::Cpu).unwrap();
        let y = upsample_bilinear2d(&x, 2).unwrap();
        assert_eq!(y.dims(), &[1, 1, 2, 6]);
        let v = y.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(&v[..6], &[0.0, 0.25, 0.75, 1.75, 3.25, 4.0]);
        assert_eq!(&v[..6], &v[6..]);
    }

    #[test]
    fn takes_a_strided_input() {
        let x = Tensor::arange(0f32, 48.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 3, 4, 4))
            .unwrap();
        let part = x.narrow(2, 1, 2).unwrap().narrow(3, 1, 2).unwrap();
        let want = upsample_bilinear2d(&part.contiguous().unwrap(), 2).unwrap();
        let got = upsample_bilinear2d(&part, 2).unwrap();
        let d = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    }
}
