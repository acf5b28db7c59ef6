//! Batched decoding: each group has its own responder mask, hence its own decode matrix.

use rayon::prelude::*;

use super::PARALLEL_OUTPUTS;
use super::combine::{Store, combine_rows};
use super::element::{Accumulator, Element};
use crate::code::Code;
use crate::error::Result;
use crate::matrix::Matrix;
use crate::shape::{expect_len, whole_groups};

/// Decodes worker outputs `[B, N, row_len]` into `[B, K, row_len]`, where `masks[b, n]` says
/// whether worker `n` answered for group `b`.
///
/// Rows of workers that did not answer are never read, so they may hold anything (NaN from
/// an unfinished buffer, say). Every mask is checked before anything is written: a bad group
/// leaves `decoded` untouched.
pub fn decode<T: Element>(code: &Code, outputs: &[T], row_len: usize, masks: &[bool], decoded: &mut [T]) -> Result<()> {
    let (k, n) = (code.params().queries(), code.params().workers());
    let groups = whole_groups("worker outputs", outputs.len(), n, row_len)?;
    expect_len("responder masks", masks.len(), groups * n)?;
    expect_len("decoded outputs", decoded.len(), groups * k * row_len)?;
    code.check_masks(masks)?;
    let store = Store::for_output_bytes(std::mem::size_of_val(decoded));
    let one_group = |((group, mask), out): ((&[T], &[bool]), &mut [T])| -> Result<()> {
        let responders: Vec<usize> = (0..n).filter(|&w| mask[w]).collect();
        let matrix = Matrix::from_rows(k, responders.len(), |j, row| code.decode_row_into(j, &responders, row));
        matrix.ensure_finite("decode")?;
        let weights: Vec<T::Acc> = matrix.as_slice().iter().map(|&w| T::Acc::from_weight(w)).collect();
        let inputs: Vec<&[T]> = responders.iter().map(|&w| &group[w * row_len..(w + 1) * row_len]).collect();
        let mut rows: Vec<&mut [T]> = out.chunks_exact_mut(row_len).collect();
        combine_rows(&weights, &inputs, &mut rows, store);
        Ok(())
    };
    if decoded.len() < PARALLEL_OUTPUTS {
        return outputs
            .chunks_exact(n * row_len)
            .zip(masks.chunks_exact(n))
            .zip(decoded.chunks_exact_mut(k * row_len))
            .try_for_each(one_group);
    }
    outputs
        .par_chunks_exact(n * row_len)
        .zip(masks.par_chunks_exact(n))
        .zip(decoded.par_chunks_exact_mut(k * row_len))
        .try_for_each(one_group)
}

/// [`decode`] into a new buffer.
pub fn decode_to_vec<T: Element + Default>(
    code: &Code,
    outputs: &[T],
    row_len: usize,
    masks: &[bool],
) -> Result<Vec<T>> {
    let groups = whole_groups("worker outputs", outputs.len(), code.params().workers(), row_len)?;
    let mut decoded = vec![T::default(); groups * code.params().queries() * row_len];
    decode(code, outputs, row_len, masks, &mut decoded)?;
    Ok(decoded)
}

/// Decodes a Byzantine code's groups (`A > 0`): per group, [`locate`](crate::locate())
/// the faulty responders with `locator`, then decode from the others ([`decode_located`]).
/// Returns, per group, the workers removed (their rows, NaN included, never reach `decoded`).
///
/// Errors as [`decode`] and [`locate`](crate::locate()) do, before anything is written. With
/// `A = 0` this is [`decode`], removing nobody.
pub fn decode_robust<T: Element>(
    code: &Code,
    locator: &crate::Locator,
    outputs: &[T],
    row_len: usize,
    masks: &[bool],
    decoded: &mut [T],
) -> Result<Vec<Vec<usize>>> {
    let groups = whole_groups("worker outputs", outputs.len(), code.params().workers(), row_len)?;
    expect_len("decoded outputs", decoded.len(), groups * code.params().queries() * row_len)?;
    let location = crate::locate(code, locator, outputs, row_len, masks)?;
    decode_located(code, locator, outputs, row_len, &location.masks, decoded)?;
    Ok(location.located)
}

/// Decodes groups from which [`locate`](crate::locate) removed its suspects (`masks`: the
/// masks it returned): from all `N` nodes with the code itself once `locator` has filled the
/// missing rows ([`Locator::imputed`](crate::Locator::imputed)), else from the responders
/// with the erasure code.
pub fn decode_located<T: Element>(
    code: &Code,
    locator: &crate::Locator,
    outputs: &[T],
    row_len: usize,
    masks: &[bool],
    decoded: &mut [T],
) -> Result<()> {
    match locator.imputed(code, outputs, row_len, masks)? {
        Some(filled) => decode(code, &filled, row_len, &vec![true; masks.len()], decoded),
        None => decode(&code.erasure_code()?, outputs, row_len, masks, decoded),
    }
}
