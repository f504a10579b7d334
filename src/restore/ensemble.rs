//! The x8 self-ensemble: a run averaged over the 8 flips and rotations of its input.

use candle_core::Tensor;

/// The mean of `run` over the 8 symmetries of `x`'s last two dims, each output turned back.
pub fn x8(x: &Tensor, run: impl Fn(&Tensor) -> anyhow::Result<Tensor>) -> anyhow::Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for t in 0..8 {
        let y = dihedral_inverse(&run(&dihedral(x, t)?)?, t)?;
        acc = Some(match acc {
            Some(a) => (a + y)?,
            None => y,
        });
    }
    Ok((acc.expect("8 runs") / 8.0)?)
}

fn flip_w(t: &Tensor) -> candle_core::Result<Tensor> {
    let w = t.dim(3)?;
    let idx = Tensor::from_vec((0..w as u32).rev().collect::<Vec<_>>(), w, t.device())?;
    t.contiguous()?.index_select(&idx, 3)
}

/// One of the 8 symmetries of the square: `t % 4` quarter turns after `t / 4` flips.
fn dihedral(x: &Tensor, t: usize) -> candle_core::Result<Tensor> {
    let mut y = if t >= 4 { flip_w(x)? } else { x.clone() };
    for _ in 0..t % 4 {
        y = flip_w(&y.transpose(2, 3)?)?;
    }
    Ok(y)
}

fn dihedral_inverse(y: &Tensor, t: usize) -> candle_core::Result<Tensor> {
    let mut x = y.clone();
    for _ in 0..t % 4 {
        x = flip_w(&x)?.transpose(2, 3)?;
    }
    if t >= 4 {
        x = flip_w(&x)?;
    }
    x.contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn dihedral_round_trips() {
        let x = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 3, 4))
            .unwrap();
        let mut seen = vec![];
        for t in 0..8 {
            let y = dihedral(&x, t).unwrap();
            let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(!seen.contains(&v), "transform {t} repeats another");
            seen.push(v);
            let back = dihedral_inverse(&y, t).unwrap();
            assert_eq!(
                back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
    }
}
