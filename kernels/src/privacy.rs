//! Masks for private codes: the `T` random rows mixed into every group.
//!
//! A private code ([`CodeParamsBuilder::privacy`](crate::CodeParamsBuilder::privacy))
//! interpolates `K` queries and `T` masks over `K + T` data nodes, so any worker's coded query
//! is its queries' mixture plus its masks' mixture. The masks must be fresh for every group and
//! unpredictable to the workers: [`MaskSampler`] draws them from ChaCha20, a cryptographically
//! strong generator, seeded from the operating system for serving or from a number for
//! reproducible evaluations.
//!
//! This privacy is empirical: Gaussian masks over the reals hide a query only as far as their
//! scale drowns its weight in a worker's mixture (Berrut weights favour the nearest data nodes).
//! It is not the information-theoretic privacy of Lagrange coded computing over a finite field.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, Normal};

use crate::code::Code;
use crate::error::{Error, Result};

/// The mask scale used when none is asked for, in the units of the queries (MNIST pixels
/// scaled to `[0, 1]`, then normalised): see the README's privacy section for the measurement.
pub const DEFAULT_MASK_SIGMA: f64 = 1.0;

/// Draws masks `N(0, sigma^2)`, independently per element, from ChaCha20.
#[derive(Clone, Debug)]
pub struct MaskSampler {
    sigma: f64,
    normal: Normal<f32>,
    rng: ChaCha20Rng,
}

impl MaskSampler {
    /// A sampler seeded from the operating system's entropy: what a service uses.
    pub fn from_entropy(sigma: f64) -> Result<Self> {
        Self::with_rng(sigma, ChaCha20Rng::from_os_rng())
    }

    /// A sampler seeded with `seed`: the same masks every run, for evaluations and tests.
    pub fn seeded(sigma: f64, seed: u64) -> Result<Self> {
        Self::with_rng(sigma, ChaCha20Rng::seed_from_u64(seed))
    }

    fn with_rng(sigma: f64, rng: ChaCha20Rng) -> Result<Self> {
        let normal = Normal::new(0.0, sigma as f32)
            .ok()
            .filter(|_| sigma.is_finite() && sigma > 0.0 && (sigma as f32).is_normal())
            .ok_or(Error::InvalidMaskSigma { sigma })?;
        Ok(MaskSampler { sigma, normal, rng })
    }

    /// The masks' standard deviation, in the units of the queries.
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// Fills `masks` with fresh draws.
    pub fn fill(&mut self, masks: &mut [f32]) {
        for m in masks {
            *m = self.normal.sample(&mut self.rng);
        }
    }

    /// Fresh masks for `groups` groups of `code` on rows of `row_len`: `[groups, T, row_len]`,
    /// what [`cpu::encode_masked`](crate::cpu::encode_masked) takes (empty when `T = 0`).
    pub fn masks(&mut self, code: &Code, groups: usize, row_len: usize) -> Vec<f32> {
        let mut masks = vec![0.0; groups * code.params().privacy() * row_len];
        self.fill(&mut masks);
        masks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_masks_repeat_and_have_the_asked_scale() {
        let code = Code::new(crate::CodeParams::builder(4, 7).stragglers(1).privacy(2).build().unwrap()).unwrap();
        let a = MaskSampler::seeded(3.0, 7).unwrap().masks(&code, 500, 10);
        let b = MaskSampler::seeded(3.0, 7).unwrap().masks(&code, 500, 10);
        let c = MaskSampler::seeded(3.0, 8).unwrap().masks(&code, 500, 10);
        assert_eq!(a.len(), 500 * 2 * 10);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mean = a.iter().map(|&x| f64::from(x)).sum::<f64>() / a.len() as f64;
        let sd = (a.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / a.len() as f64).sqrt();
        assert!(mean.abs() < 0.1 && (sd - 3.0).abs() < 0.1, "mean {mean}, sd {sd}");
    }

    #[test]
    fn entropy_seeded_samplers_differ() {
        let mut a = [0.0f32; 16];
        let mut b = [0.0f32; 16];
        MaskSampler::from_entropy(1.0).unwrap().fill(&mut a);
        MaskSampler::from_entropy(1.0).unwrap().fill(&mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn bad_sigmas_are_refused() {
        for sigma in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-300] {
            assert!(matches!(MaskSampler::seeded(sigma, 1), Err(Error::InvalidMaskSigma { .. })), "{sigma}");
        }
    }
}
