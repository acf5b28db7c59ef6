//! Batched encoding: `coded[b, n, :] = sum_j E[n, j] * queries[b, j, :]`.

use rayon::prelude::*;

use super::combine::{Store, combine_rows};
use super::element::{Accumulator, Element};
use crate::code::Code;
use crate::error::Result;
use crate::shape::{expect_len, whole_groups};

/// Encodes `queries` (`[B, K, row_len]`) into `coded` (`[B, N, row_len]`).
///
/// Nothing is written unless every shape checks out.
pub fn encode<T: Element>(code: &Code, queries: &[T], row_len: usize, coded: &mut [T]) -> Result<()> {
    let (k, n) = (code.params().queries(), code.params().workers());
    let groups = whole_groups("queries", queries.len(), k, row_len)?;
    expect_len("coded queries", coded.len(), groups * n * row_len)?;
    let weights: Vec<T::Acc> = code.encode_matrix().as_slice().iter().map(|&w| T::Acc::from_weight(w)).collect();
    let store = Store::for_output_bytes(std::mem::size_of_val(coded));
    queries.par_chunks_exact(k * row_len).zip(coded.par_chunks_exact_mut(n * row_len)).for_each(|(group, out)| {
        let inputs: Vec<&[T]> = group.chunks_exact(row_len).collect();
        let mut outputs: Vec<&mut [T]> = out.chunks_exact_mut(row_len).collect();
        combine_rows(&weights, &inputs, &mut outputs, store);
    });
    Ok(())
}

/// [`encode`] into a new buffer.
pub fn encode_to_vec<T: Element + Default>(code: &Code, queries: &[T], row_len: usize) -> Result<Vec<T>> {
    let groups = whole_groups("queries", queries.len(), code.params().queries(), row_len)?;
    let mut coded = vec![T::default(); groups * code.params().workers() * row_len];
    encode(code, queries, row_len, &mut coded)?;
    Ok(coded)
}
