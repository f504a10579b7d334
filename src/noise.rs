//! Denoising at any noise level with the released denoiser, which was trained at sigma 25 only.
//!
//! Scaling a noisy image about mid-grey by `25 / sigma` turns its noise into sigma 25: the model
//! denoises that, and the result is scaled back by `sigma / 25`. [`rescales`] says at which noise
//! levels this beats running the model as it is: from sigma 20 up (the table, measured on Set12,
//! is in docs/accuracy.md). Below sigma 25 the scaled image holds values outside [0, 1]; they go
//! to the model as they are (clamping them loses more), and from sigma 15 down the plain model
//! wins.

/// The noise level (0-255 scale) the released Converse-DnCNN was trained at.
pub const MODEL_SIGMA: f64 = 25.0;

/// The lowest noise level (0-255 scale) that is rescaled: on Set12 rescaling wins at sigma 20
/// and loses at 15.
pub const RESCALE_FROM: f64 = 20.0;

/// Whether rescaling beats the plain model at noise level `sigma` (0-255 scale), as measured on
/// Set12: from [`RESCALE_FROM`] up, except at sigma 25 itself, where the model runs untouched.
pub fn rescales(sigma: f64) -> bool {
    sigma >= RESCALE_FROM && sigma != MODEL_SIGMA
}

/// The rescaling for noise level `sigma`, when [`rescales`] says it wins.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rescale {
    sigma: f64,
}

impl Rescale {
    /// The rescaling the rule picks for `sigma`, if any.
    pub fn for_sigma(sigma: f64) -> Option<Self> {
        rescales(sigma).then_some(Self { sigma })
    }

    /// The noise level it undoes.
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// Noisy values (0 to 1 scale) to the model's noise level: `0.5 + (v - 0.5) * 25 / sigma`.
    pub fn to_model(&self, values: &mut [f32]) {
        scale_about_grey(values, MODEL_SIGMA / self.sigma);
    }

    /// The model's output back to the image's contrast: `0.5 + (v - 0.5) * sigma / 25`.
    pub fn from_model(&self, values: &mut [f32]) {
        scale_about_grey(values, self.sigma / MODEL_SIGMA);
    }
}

fn scale_about_grey(values: &mut [f32], gain: f64) {
    for v in values {
        *v = (0.5 + (f64::from(*v) - 0.5) * gain) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_runs_as_it_is_below_sigma_20_and_at_25() {
        assert_eq!(Rescale::for_sigma(15.0), None);
        assert_eq!(Rescale::for_sigma(25.0), None);
        assert!(Rescale::for_sigma(20.0).is_some());
        assert!(Rescale::for_sigma(50.0).is_some());
    }

    #[test]
    fn the_scaling_halves_sigma_50_about_grey_and_undoes_itself() {
        let r = Rescale::for_sigma(50.0).unwrap();
        let mut v = [0.0f32, 0.5, 1.0, 1.25];
        r.to_model(&mut v);
        assert_eq!(v, [0.25, 0.5, 0.75, 0.875]);
        r.from_model(&mut v);
        assert_eq!(v, [0.0, 0.5, 1.0, 1.25]);
    }
}
