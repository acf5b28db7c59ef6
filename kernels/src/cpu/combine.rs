//! The one CPU kernel: rows of a weight matrix applied to a set of equal-length rows.
//!
//! `outputs[r] = sum_c weights[r, c] * inputs[c]`, elementwise. Encoding is this with the
//! `N x K` encode matrix over a group's `K` queries; decoding is this with a group's `K x |F|`
//! decode matrix over its responders' outputs. It is memory-bound, so it is written to touch
//! each input and output element once in memory: columns are processed in tiles that keep
//! the widened inputs and one accumulator row in cache, and wide rows are split across threads.

use super::element::{Accumulator, Element};

/// Columns per tile: `(inputs + 1)` tiles of accumulators stay in L1/L2 for typical `K`.
const TILE: usize = 1024;
/// Rows wider than this are split in two and done in parallel (recursively).
const PARALLEL_WIDTH: usize = 16 * TILE;

/// `outputs[r] = sum_c weights[r * inputs.len() + c] * inputs[c]` for rows of equal length.
/// Zero weights are skipped, so a row only reads the inputs it actually mixes (a NaN in an
/// input with weight zero stays out of that output).
pub(crate) fn combine_rows<T: Element>(weights: &[T::Acc], inputs: &[&[T]], outputs: &mut [&mut [T]]) {
    debug_assert_eq!(weights.len(), inputs.len() * outputs.len());
    let width = inputs.first().map_or(0, |row| row.len());
    debug_assert!(inputs.iter().all(|row| row.len() == width));
    debug_assert!(outputs.iter().all(|row| row.len() == width));
    if width <= PARALLEL_WIDTH {
        return combine_tiles(weights, inputs, outputs, width);
    }
    let mid = (width / 2).next_multiple_of(TILE);
    let (inputs_left, inputs_right): (Vec<&[T]>, Vec<&[T]>) = inputs.iter().map(|row| row.split_at(mid)).unzip();
    let (mut outputs_left, mut outputs_right): (Vec<&mut [T]>, Vec<&mut [T]>) =
        outputs.iter_mut().map(|row| std::mem::take(row).split_at_mut(mid)).unzip();
    rayon::join(
        || combine_rows(weights, &inputs_left, &mut outputs_left),
        || combine_rows(weights, &inputs_right, &mut outputs_right),
    );
}

fn combine_tiles<T: Element>(weights: &[T::Acc], inputs: &[&[T]], outputs: &mut [&mut [T]], width: usize) {
    let tile = width.min(TILE);
    let zero = T::Acc::default();
    let mut widened = vec![zero; inputs.len() * tile];
    let mut sum = vec![zero; tile];
    let weight_rows = weights.chunks_exact(inputs.len().max(1));
    for start in (0..width).step_by(TILE) {
        let len = tile.min(width - start);
        for (input, scratch) in inputs.iter().zip(widened.chunks_exact_mut(tile)) {
            T::widen(&input[start..start + len], &mut scratch[..len]);
        }
        for (output, row_weights) in outputs.iter_mut().zip(weight_rows.clone()) {
            let sum = &mut sum[..len];
            sum.fill(zero);
            for (&w, x) in row_weights.iter().zip(widened.chunks_exact(tile)) {
                if w != zero {
                    axpy(w, &x[..len], sum);
                }
            }
            T::narrow(sum, &mut output[start..start + len]);
        }
    }
}

/// `y += a * x`; a plain loop the compiler vectorises.
#[inline]
fn axpy<A: Accumulator>(a: A, x: &[A], y: &mut [A]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = *y + a * x;
    }
}
