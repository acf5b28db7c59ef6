//! The CPU reference path: batched encode and decode, multithreaded with rayon.
//!
//! Tensors are flat row-major slices: queries `[B, K, D]`, coded queries `[B, N, D]`,
//! worker outputs `[B, N, C]`, decoded outputs `[B, K, C]`, responder masks `[B, N]`.
//! Storage may be `f32`, `f64`, `f16` or `bf16` (see [`Element`]); sums are formed in `f32`
//! (`f64` for `f64` storage) with weights computed in `f64`. This is the path every GPU
//! kernel is tested against, and the fallback where no adapter exists.

/// Batches with fewer output values than this are coded on the calling thread: handing a few
/// microseconds of work to the thread pool costs more (a serving coordinator decoding a batch
/// of 32 groups measured 0.8 ms per batch through the pool while workers held the cores).
pub(crate) const PARALLEL_OUTPUTS: usize = 1 << 16;

mod combine;
mod decode;
mod element;
mod encode;

pub use decode::{decode, decode_located, decode_robust, decode_to_vec};
pub use element::{Accumulator, Element};
pub use encode::{
    encode, encode_masked, encode_masked_to_vec, encode_rows, encode_rows_masked, encode_rows_to_vec, encode_to_vec,
};
