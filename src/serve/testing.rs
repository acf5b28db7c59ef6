//! What the serving modules' unit tests share.

use crate::kernels::{Code, cpu};

/// A smooth model's answers (`[groups, N, 4]`) to the coded queries of `groups` groups of
/// `code`, the queries drawn from `seed`.
pub fn answers(code: &Code, groups: usize, seed: usize) -> Vec<f32> {
    let (dim, c) = (3, 4);
    let k = code.params().queries();
    let queries: Vec<f32> = (0..groups * k * dim).map(|i| (((i + seed) * 7919 % 211) as f32 - 105.0) / 105.0).collect();
    let coded = cpu::encode_to_vec(code, &queries, dim).unwrap();
    coded
        .chunks_exact(dim)
        .flat_map(|x| (0..c).map(move |k| (x.iter().enumerate().map(|(j, v)| v * (j + k) as f32).sum::<f32>()).tanh()))
        .collect()
}
