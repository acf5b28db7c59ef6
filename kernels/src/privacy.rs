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

/// The mask scale used when none is asked for, in the units of the queries (normalised
/// inputs: zero mean, unit variance). Measured on MNIST with the digit CNN (K = 8, S = 1, the
/// authors' tail placement; README, "Private queries"): the largest scale of the sweep whose
/// decoded-accuracy cost stays within 0.1 for T = 1 and T = 2 (0.09 and 0.08). It hides a
/// typical query only partly, and the most exposed query of a group not at all.
pub const DEFAULT_MASK_SIGMA: f64 = 8.0;

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

/// How well a coalition of workers sees one query: what the privacy evaluation attacks.
#[derive(Clone, Debug, PartialEq)]
pub struct Exposure {
    /// The query position `j` of the group (`0..K`).
    pub query: usize,
    /// The colluding workers, increasing.
    pub workers: Vec<usize>,
    /// `a^T Sigma^-1 a`: the power of query `j` in the coalition's best linear combination of
    /// its coded queries over the power of everything else in it (the other queries and the
    /// masks), with queries of unit variance and masks of variance `sigma^2`.
    pub snr: f64,
}

/// Coalitions of at most this many are searched exhaustively; larger ones greedily.
const EXHAUSTIVE_COALITIONS: u128 = 100_000;

/// For every query position `j` of `code`, the `colluders` workers whose coded queries show
/// query `j` best to a linear attacker, masks of scale `sigma` (ignored by a code without
/// privacy). Coded query `n` is `sum_j E[n, j] x_j + sum_t E[n, K + t] z_t`; taking the
/// queries' elements as independent with unit variance (normalised inputs) and the masks'
/// as `N(0, sigma^2)`, a coalition `C` sees query `j` with the signal-to-noise ratio
/// `a^T Sigma^-1 a` of its best linear combination, `a = E[C, j]` and `Sigma` the covariance
/// of the rest. A learnt attacker can do better than linear; this picks whom it attacks.
pub fn exposures(code: &Code, colluders: usize, sigma: f64) -> Result<Vec<Exposure>> {
    let p = code.params();
    let (k, n) = (p.queries(), p.workers());
    if colluders == 0 || colluders > n {
        return Err(Error::InvalidColluders { colluders, workers: n });
    }
    if !(sigma.is_finite() && sigma > 0.0) {
        return Err(Error::InvalidMaskSigma { sigma });
    }
    let e = code.encode_matrix();
    let column = |workers: &[usize], source: usize| {
        nalgebra::DVector::from_iterator(workers.len(), workers.iter().map(|&w| e.row(w)[source]))
    };
    // The ratio for query `query` seen by `workers`. With `R` the other queries' covariance
    // and `M` the masks' columns, `Sigma = R + sigma^2 M M^T`; by Woodbury,
    // `a^T Sigma^-1 a = a^T R^-1 a - b^T (I / sigma^2 + M^T R^-1 M)^-1 b` with `b = M^T R^-1 a`,
    // which stays accurate where `sigma^2 M M^T` dwarfs `R`.
    let snr = |query: usize, workers: &[usize]| -> f64 {
        let m = workers.len();
        let a = column(workers, query);
        let mut r = nalgebra::DMatrix::<f64>::zeros(m, m);
        for source in (0..k).filter(|&s| s != query) {
            let c = column(workers, source);
            r += &c * c.transpose();
        }
        // A whisper of ridge keeps a coalition that sees only query `j` finite and huge.
        let ridge = 1e-12 * (r.trace() + a.norm_squared()).max(f64::MIN_POSITIVE);
        r += nalgebra::DMatrix::identity(m, m) * ridge;
        let Some(r) = r.cholesky() else { return f64::INFINITY };
        let r_a = r.solve(&a);
        if p.privacy() == 0 {
            return a.dot(&r_a);
        }
        let masks = nalgebra::DMatrix::from_columns(&(k..p.sources()).map(|t| column(workers, t)).collect::<Vec<_>>());
        let b = masks.transpose() * &r_a;
        let mut g = masks.transpose() * r.solve(&masks);
        g += nalgebra::DMatrix::identity(masks.ncols(), masks.ncols()) / (sigma * sigma);
        match g.cholesky() {
            Some(g) => (a.dot(&r_a) - b.dot(&g.solve(&b))).max(0.0),
            None => a.dot(&r_a),
        }
    };
    let exhaustive = binomial(n, colluders) <= EXHAUSTIVE_COALITIONS;
    Ok((0..k)
        .map(|query| {
            let (workers, snr) = if exhaustive {
                let mut best = (Vec::new(), f64::NEG_INFINITY);
                for_each_subset(n, colluders, &mut |subset| {
                    let value = snr(query, subset);
                    if value > best.1 {
                        best = (subset.to_vec(), value);
                    }
                });
                best
            } else {
                let mut chosen: Vec<usize> = Vec::with_capacity(colluders);
                let mut value = 0.0;
                while chosen.len() < colluders {
                    let (w, v) = (0..n)
                        .filter(|w| !chosen.contains(w))
                        .map(|w| {
                            let mut trial = chosen.clone();
                            trial.push(w);
                            (w, snr(query, &trial))
                        })
                        .fold((0, f64::NEG_INFINITY), |best, c| if c.1 > best.1 { c } else { best });
                    chosen.push(w);
                    value = v;
                }
                chosen.sort_unstable();
                (chosen, value)
            };
            Exposure { query, workers, snr }
        })
        .collect())
}

/// The query of `code` that `colluders` workers see best ([`exposures`]' largest ratio).
pub fn most_exposed(code: &Code, colluders: usize, sigma: f64) -> Result<Exposure> {
    let all = exposures(code, colluders, sigma)?;
    all.into_iter().rev().max_by(|a, b| a.snr.total_cmp(&b.snr)).ok_or(Error::NoQueries)
}

fn binomial(n: usize, r: usize) -> u128 {
    (0..r).fold(1u128, |acc, i| acc.saturating_mul((n - i) as u128) / (i as u128 + 1))
}

/// Calls `visit` with every increasing `r`-subset of `0..n`.
fn for_each_subset(n: usize, r: usize, visit: &mut dyn FnMut(&[usize])) {
    let mut subset: Vec<usize> = (0..r).collect();
    loop {
        visit(&subset);
        // The rightmost index that can still move right, then reset those after it.
        let Some(i) = (0..r).rev().find(|&i| subset[i] < n - r + i) else { return };
        subset[i] += 1;
        for j in i + 1..r {
            subset[j] = subset[j - 1] + 1;
        }
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
