//! Batched encoding: `coded[b, n, :] = sum_j E[n, j] * queries[b, j, :]`, for all `N` coded
//! queries of each group or for the rows of a chosen set of workers.

use rayon::prelude::*;

use super::PARALLEL_OUTPUTS;
use super::combine::{Store, combine_rows};
use super::element::{Accumulator, Element};
use crate::code::Code;
use crate::error::Result;
use crate::matrix::Matrix;
use crate::shape::{expect_len, whole_groups};

/// Encodes `queries` (`[B, K, row_len]`) into `coded` (`[B, N, row_len]`).
///
/// Nothing is written unless every shape checks out.
pub fn encode<T: Element>(code: &Code, queries: &[T], row_len: usize, coded: &mut [T]) -> Result<()> {
    encode_with(code.encode_matrix(), queries, row_len, coded)
}

/// Encodes `queries` (`[B, K, row_len]`) into the coded queries of `workers` only
/// (`[B, workers.len(), row_len]`, in the order given): what a device hosting those workers
/// forms. Rows are those of [`Code::encode_rows`]; nothing is written unless every index and
/// shape checks out.
pub fn encode_rows<T: Element>(
    code: &Code,
    workers: &[usize],
    queries: &[T],
    row_len: usize,
    coded: &mut [T],
) -> Result<()> {
    encode_with(&code.encode_rows(workers)?, queries, row_len, coded)
}

/// [`encode`] into a new buffer.
pub fn encode_to_vec<T: Element + Default>(code: &Code, queries: &[T], row_len: usize) -> Result<Vec<T>> {
    let all: Vec<usize> = (0..code.params().workers()).collect();
    encode_rows_to_vec(code, &all, queries, row_len)
}

/// [`encode_rows`] into a new buffer.
pub fn encode_rows_to_vec<T: Element + Default>(
    code: &Code,
    workers: &[usize],
    queries: &[T],
    row_len: usize,
) -> Result<Vec<T>> {
    let groups = whole_groups("queries", queries.len(), code.params().queries(), row_len)?;
    let mut coded = vec![T::default(); groups * workers.len() * row_len];
    encode_rows(code, workers, queries, row_len, &mut coded)?;
    Ok(coded)
}

/// `coded[b, r, :] = sum_j weights[r, j] * queries[b, j, :]`.
fn encode_with<T: Element>(weights: &Matrix, queries: &[T], row_len: usize, coded: &mut [T]) -> Result<()> {
    let (k, rows) = (weights.cols(), weights.rows());
    let groups = whole_groups("queries", queries.len(), k, row_len)?;
    expect_len("coded queries", coded.len(), groups * rows * row_len)?;
    if rows == 0 {
        return Ok(());
    }
    let weights: Vec<T::Acc> = weights.as_slice().iter().map(|&w| T::Acc::from_weight(w)).collect();
    let store = Store::for_output_bytes(std::mem::size_of_val(coded));
    let one_group = |(group, out): (&[T], &mut [T])| {
        let inputs: Vec<&[T]> = group.chunks_exact(row_len).collect();
        let mut outputs: Vec<&mut [T]> = out.chunks_exact_mut(row_len).collect();
        combine_rows(&weights, &inputs, &mut outputs, store);
    };
    if coded.len() < PARALLEL_OUTPUTS {
        queries.chunks_exact(k * row_len).zip(coded.chunks_exact_mut(rows * row_len)).for_each(one_group);
    } else {
        queries.par_chunks_exact(k * row_len).zip(coded.par_chunks_exact_mut(rows * row_len)).for_each(one_group);
    }
    Ok(())
}
