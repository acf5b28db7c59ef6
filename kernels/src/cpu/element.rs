//! Storage types the kernels accept, and the type each accumulates in.

use half::{bf16, f16, slice::HalfFloatSliceExt};
use std::ops::{Add, Mul};

/// The arithmetic type of a kernel's sums: `f32` for 32-bit and 16-bit storage, `f64` for
/// 64-bit storage.
pub trait Accumulator: Copy + Default + PartialEq + Send + Sync + Add<Output = Self> + Mul<Output = Self> + 'static {
    /// A coding weight (always computed in `f64`) in this precision.
    fn from_weight(weight: f64) -> Self;
}

impl Accumulator for f32 {
    fn from_weight(weight: f64) -> Self {
        weight as f32
    }
}

impl Accumulator for f64 {
    fn from_weight(weight: f64) -> Self {
        weight
    }
}

/// A storage element of query and output tensors.
pub trait Element: Copy + Send + Sync + 'static {
    /// Where sums are formed.
    type Acc: Accumulator;
    /// The numpy dtype name, for messages.
    const DTYPE: &'static str;
    /// Converts a slice of storage to accumulators (`src.len() == dst.len()`).
    fn widen(src: &[Self], dst: &mut [Self::Acc]);
    /// Converts accumulators back to storage, rounding to nearest.
    fn narrow(src: &[Self::Acc], dst: &mut [Self]);
}

impl Element for f32 {
    type Acc = f32;
    const DTYPE: &'static str = "float32";
    fn widen(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn narrow(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
}

impl Element for f64 {
    type Acc = f64;
    const DTYPE: &'static str = "float64";
    fn widen(src: &[Self], dst: &mut [f64]) {
        dst.copy_from_slice(src);
    }
    fn narrow(src: &[f64], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
}

impl Element for f16 {
    type Acc = f32;
    const DTYPE: &'static str = "float16";
    fn widen(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
    fn narrow(src: &[f32], dst: &mut [Self]) {
        dst.convert_from_f32_slice(src);
    }
}

impl Element for bf16 {
    type Acc = f32;
    const DTYPE: &'static str = "bfloat16";
    fn widen(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
    fn narrow(src: &[f32], dst: &mut [Self]) {
        dst.convert_from_f32_slice(src);
    }
}
