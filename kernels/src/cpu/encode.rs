//! Batched encoding: `coded[b, n, :] = sum_j E[n, j] * queries[b, j, :]`, for all `N` coded
//! queries of each group or for the rows of a chosen set of workers.

use rayon::prelude::*;

use super::PARALLEL_OUTPUTS;
use super::combine::{Store, combine_rows};
use super::element::{Accumulator, Element};
use crate::code::Code;
use crate::error::{Error, Result};
use crate::matrix::Matrix;
use crate::shape::{expect_len, whole_groups};

/// Encodes `queries` (`[B, K, row_len]`) into `coded` (`[B, N, row_len]`). For a code
/// without privacy; a private code's encoder also takes masks ([`encode_masked`]).
///
/// Nothing is written unless every shape checks out.
pub fn encode<T: Element>(code: &Code, queries: &[T], row_len: usize, coded: &mut [T]) -> Result<()> {
    encode_masked(code, queries, unmasked(code)?, row_len, coded)
}

/// Encodes `queries` (`[B, K, row_len]`) with `masks` (`[B, T, row_len]`, fresh random rows
/// for every group: see [`MaskSampler`](crate::privacy::MaskSampler)) into `coded`
/// (`[B, N, row_len]`). With `T = 0`, `masks` is empty and this is [`encode`].
pub fn encode_masked<T: Element>(
    code: &Code,
    queries: &[T],
    masks: &[T],
    row_len: usize,
    coded: &mut [T],
) -> Result<()> {
    encode_with(code, code.encode_matrix(), queries, masks, row_len, coded)
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
    encode_rows_masked(code, workers, queries, unmasked(code)?, row_len, coded)
}

/// [`encode_rows`] for a private code: `masks` as in [`encode_masked`].
pub fn encode_rows_masked<T: Element>(
    code: &Code,
    workers: &[usize],
    queries: &[T],
    masks: &[T],
    row_len: usize,
    coded: &mut [T],
) -> Result<()> {
    encode_with(code, &code.encode_rows(workers)?, queries, masks, row_len, coded)
}

/// [`encode`] into a new buffer.
pub fn encode_to_vec<T: Element + Default>(code: &Code, queries: &[T], row_len: usize) -> Result<Vec<T>> {
    encode_masked_to_vec(code, queries, unmasked(code)?, row_len)
}

/// [`encode_masked`] into a new buffer.
pub fn encode_masked_to_vec<T: Element + Default>(
    code: &Code,
    queries: &[T],
    masks: &[T],
    row_len: usize,
) -> Result<Vec<T>> {
    let all: Vec<usize> = (0..code.params().workers()).collect();
    let groups = whole_groups("queries", queries.len(), code.params().queries(), row_len)?;
    let mut coded = vec![T::default(); groups * all.len() * row_len];
    encode_rows_masked(code, &all, queries, masks, row_len, &mut coded)?;
    Ok(coded)
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

/// The (empty) masks of a code without privacy; a private code refuses to encode without
/// masks rather than send its queries unmasked.
fn unmasked<T>(code: &Code) -> Result<&'static [T]> {
    match code.params().privacy() {
        0 => Ok(&[]),
        privacy => Err(Error::MasksMismatch { privacy, what: "encode it with masks (encode_masked)" }),
    }
}

/// `coded[b, r, :] = sum_j weights[r, j] * sources[b, j, :]`, the sources of group `b` being
/// its `K` queries then its `T` masks.
fn encode_with<T: Element>(
    code: &Code,
    weights: &Matrix,
    queries: &[T],
    masks: &[T],
    row_len: usize,
    coded: &mut [T],
) -> Result<()> {
    let (k, t, rows) = (code.params().queries(), code.params().privacy(), weights.rows());
    let groups = whole_groups("queries", queries.len(), k, row_len)?;
    if t == 0 && !masks.is_empty() {
        return Err(Error::MasksMismatch { privacy: 0, what: "it takes no masks" });
    }
    expect_len("masks", masks.len(), groups * t * row_len)?;
    expect_len("coded queries", coded.len(), groups * rows * row_len)?;
    if rows == 0 || groups == 0 {
        return Ok(());
    }
    let weights: Vec<T::Acc> = weights.as_slice().iter().map(|&w| T::Acc::from_weight(w)).collect();
    let store = Store::for_output_bytes(std::mem::size_of_val(coded));
    let one_group = |(b, out): (usize, &mut [T])| {
        let group = &queries[b * k * row_len..][..k * row_len];
        let masks = &masks[b * t * row_len..][..t * row_len];
        let inputs: Vec<&[T]> = group.chunks_exact(row_len).chain(masks.chunks_exact(row_len)).collect();
        let mut outputs: Vec<&mut [T]> = out.chunks_exact_mut(row_len).collect();
        combine_rows(&weights, &inputs, &mut outputs, store);
    };
    if coded.len() < PARALLEL_OUTPUTS {
        coded.chunks_exact_mut(rows * row_len).enumerate().for_each(one_group);
    } else {
        coded.par_chunks_exact_mut(rows * row_len).enumerate().for_each(one_group);
    }
    Ok(())
}
