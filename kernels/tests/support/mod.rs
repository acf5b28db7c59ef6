//! Seeded test data shared by the kernel tests.

#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};

/// `len` values uniform in [-4, 4), from `seed`.
pub fn random_values(len: usize, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-4.0..4.0)).collect()
}

/// [`random_values`] in `f32`.
pub fn random_f32(len: usize, seed: u64) -> Vec<f32> {
    random_values(len, seed).into_iter().map(|v| v as f32).collect()
}

/// Responder masks `[groups, n]` with exactly `s` random stragglers per group.
pub fn random_masks(groups: usize, n: usize, s: usize, seed: u64) -> Vec<bool> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut masks = vec![true; groups * n];
    for mask in masks.chunks_exact_mut(n) {
        for w in sample(&mut rng, n, s) {
            mask[w] = false;
        }
    }
    masks
}
