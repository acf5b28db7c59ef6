//! The one CPU kernel: rows of a weight matrix applied to a set of equal-length rows.
//!
//! `outputs[r] = sum_c weights[r, c] * inputs[c]`, elementwise. Encoding is this with the
//! `N x K` encode matrix over a group's `K` queries; decoding is this with a group's `K x |F|`
//! decode matrix over its responders' outputs. It is memory-bound, so it is written to touch
//! each element once in memory: columns go in tiles whose inputs stay in L1 while every output
//! row is formed, sums are held in registers, and wide rows are split across threads.

use super::element::{Accumulator, Element};

/// Columns per tile: `K` input tiles of `f32` (16 KiB for K = 8) stay in L1.
const TILE: usize = 512;
/// Rows wider than this are split in two and done in parallel (recursively).
const PARALLEL_WIDTH: usize = 16 * TILE;

/// How outputs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Store {
    /// Through the cache: best when the output fits in it or is read again soon.
    Cached,
    /// With non-temporal stores, skipping the read-for-ownership of every output line: best
    /// for outputs much larger than the last-level cache (what a large memcpy does too).
    Streaming,
}

impl Store {
    /// Outputs above this size are streamed. Glibc's memcpy switches at about 3/4 of the
    /// last-level cache per thread; 128 MiB sits above the caches of most servers.
    const STREAMING_MIN_BYTES: usize = 128 << 20;

    /// The store for an output of `bytes` bytes.
    pub(crate) fn for_output_bytes(bytes: usize) -> Self {
        if bytes >= Self::STREAMING_MIN_BYTES { Store::Streaming } else { Store::Cached }
    }
}

/// `outputs[r] = sum_c weights[r * inputs.len() + c] * inputs[c]` for rows of equal length.
/// Zero weights are skipped, so a row only reads the inputs it actually mixes (a NaN in an
/// input with weight zero stays out of that output).
pub(crate) fn combine_rows<T: Element>(weights: &[T::Acc], inputs: &[&[T]], outputs: &mut [&mut [T]], store: Store) {
    debug_assert_eq!(weights.len(), inputs.len() * outputs.len());
    let width = inputs.first().map_or(0, |row| row.len());
    debug_assert!(inputs.iter().all(|row| row.len() == width));
    debug_assert!(outputs.iter().all(|row| row.len() == width));
    if width <= PARALLEL_WIDTH {
        return combine_tiles(weights, inputs, outputs, width, store);
    }
    let mid = (width / 2).next_multiple_of(TILE);
    let (inputs_left, inputs_right): (Vec<&[T]>, Vec<&[T]>) = inputs.iter().map(|row| row.split_at(mid)).unzip();
    let (mut outputs_left, mut outputs_right): (Vec<&mut [T]>, Vec<&mut [T]>) =
        outputs.iter_mut().map(|row| std::mem::take(row).split_at_mut(mid)).unzip();
    rayon::join(
        || combine_rows(weights, &inputs_left, &mut outputs_left, store),
        || combine_rows(weights, &inputs_right, &mut outputs_right, store),
    );
}

/// Runs the kernel compiled for the widest instruction set the CPU has (the feature checks
/// are cached loads), with the store mode fixed at compile time.
fn combine_tiles<T: Element>(
    weights: &[T::Acc],
    inputs: &[&[T]],
    outputs: &mut [&mut [T]],
    width: usize,
    store: Store,
) {
    match store {
        Store::Cached => combine_tiles_isa::<T, false>(weights, inputs, outputs, width),
        Store::Streaming => {
            combine_tiles_isa::<T, true>(weights, inputs, outputs, width);
            // Non-temporal stores are weakly ordered: fence them before another thread reads.
            #[cfg(target_arch = "x86_64")]
            // SAFETY: SSE is part of x86_64.
            unsafe {
                std::arch::x86_64::_mm_sfence()
            };
        }
    }
}

fn combine_tiles_isa<T: Element, const STREAM: bool>(
    weights: &[T::Acc],
    inputs: &[&[T]],
    outputs: &mut [&mut [T]],
    width: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") {
            // SAFETY: the features this function is compiled for were just detected.
            return unsafe { combine_tiles_avx512::<T, STREAM>(weights, inputs, outputs, width) };
        }
        if has!("avx2") && has!("fma") {
            // SAFETY: as above.
            return unsafe { combine_tiles_avx2_fma::<T, STREAM>(weights, inputs, outputs, width) };
        }
    }
    combine_tiles_portable::<T, false, 32, STREAM>(weights, inputs, outputs, width);
}

/// The kernel compiled for AVX2 + FMA: 8 lanes a register, fused multiply-adds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn combine_tiles_avx2_fma<T: Element, const STREAM: bool>(
    weights: &[T::Acc],
    inputs: &[&[T]],
    outputs: &mut [&mut [T]],
    width: usize,
) {
    combine_tiles_portable::<T, true, 64, STREAM>(weights, inputs, outputs, width);
}

/// The kernel compiled for AVX-512: 16 lanes a register.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn combine_tiles_avx512<T: Element, const STREAM: bool>(
    weights: &[T::Acc],
    inputs: &[&[T]],
    outputs: &mut [&mut [T]],
    width: usize,
) {
    combine_tiles_portable::<T, true, 128, STREAM>(weights, inputs, outputs, width);
}

/// The kernel, written once. `LANES` columns are summed in registers at a time: eight vector
/// registers' worth of `f32` (128 with AVX-512, 64 with AVX2, 32 with SSE). Eight independent
/// accumulators hide the latency of a multiply-add (about 4 cycles at 2 a cycle); fewer leave
/// the loop waiting on its own results.
#[inline(always)]
fn combine_tiles_portable<T: Element, const FMA: bool, const LANES: usize, const STREAM: bool>(
    weights: &[T::Acc],
    inputs: &[&[T]],
    outputs: &mut [&mut [T]],
    width: usize,
) {
    let tile = width.min(TILE);
    let zero = T::Acc::default();
    // Storage in the accumulator type (f32, f64) is read and written in place; other types
    // (f16, bf16) are widened into scratch once per tile and narrowed on the way out.
    let in_place: Option<Vec<&[T::Acc]>> = inputs.iter().map(|row| T::as_acc(row)).collect();
    let mut widened = if in_place.is_some() { Vec::new() } else { vec![zero; inputs.len() * tile] };
    let mut sum = vec![zero; tile];
    let weight_rows = weights.chunks_exact(inputs.len().max(1));
    for start in (0..width).step_by(TILE) {
        let len = tile.min(width - start);
        let rows: Vec<&[T::Acc]> = match &in_place {
            Some(rows) => rows.iter().map(|row| &row[start..start + len]).collect(),
            None => {
                for (input, scratch) in inputs.iter().zip(widened.chunks_exact_mut(tile)) {
                    T::widen(&input[start..start + len], &mut scratch[..len]);
                }
                widened.chunks_exact(tile).map(|row| &row[..len]).collect()
            }
        };
        for (output, row_weights) in outputs.iter_mut().zip(weight_rows.clone()) {
            let output = &mut output[start..start + len];
            match T::as_acc_mut(output) {
                Some(output) => sum_rows::<T::Acc, FMA, LANES, STREAM>(row_weights, &rows, output),
                None => {
                    sum_rows::<T::Acc, FMA, LANES, false>(row_weights, &rows, &mut sum[..len]);
                    T::narrow(&sum[..len], output);
                }
            }
        }
    }
}

/// `out = sum_c weights[c] * rows[c]`. Each block of `LANES` columns is summed over all rows
/// in registers and stored once, rather than read and written back for every row.
#[inline(always)]
fn sum_rows<A: Accumulator, const FMA: bool, const LANES: usize, const STREAM: bool>(
    weights: &[A],
    rows: &[&[A]],
    out: &mut [A],
) {
    let zero = A::default();
    let offset = out.len() / LANES * LANES;
    let mut blocks = out.chunks_exact_mut(LANES);
    for (b, block) in blocks.by_ref().enumerate() {
        let mut acc = [zero; LANES];
        for (&w, row) in weights.iter().zip(rows) {
            if w == zero {
                continue; // also keeps NaN/Inf in an unused input out of this output
            }
            let x: &[A; LANES] = row[b * LANES..][..LANES].try_into().expect("a full block");
            for (a, &x) in acc.iter_mut().zip(x) {
                *a = multiply_add::<_, FMA>(w, x, *a);
            }
        }
        if STREAM { A::store_streaming(block, &acc) } else { block.copy_from_slice(&acc) }
    }
    let tail = blocks.into_remainder();
    tail.fill(zero);
    for (&w, row) in weights.iter().zip(rows) {
        if w != zero {
            for (a, &x) in tail.iter_mut().zip(&row[offset..]) {
                *a = multiply_add::<_, FMA>(w, x, *a);
            }
        }
    }
}

/// `w * x + acc`, fused where the CPU has FMA (unfused, the portable build stays fast: a
/// software `fma` call would not be).
#[inline(always)]
fn multiply_add<A: Accumulator, const FMA: bool>(w: A, x: A, acc: A) -> A {
    if FMA { w.fused_multiply_add(x, acc) } else { acc + w * x }
}
