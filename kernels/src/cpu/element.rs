//! Storage types the kernels accept, and the type each accumulates in.

use half::{bf16, f16, slice::HalfFloatSliceExt};
use std::ops::{Add, Mul};

/// The arithmetic type of a kernel's sums: `f32` for 32-bit and 16-bit storage, `f64` for
/// 64-bit storage.
pub trait Accumulator:
    Copy + Default + PartialEq + Send + Sync + Add<Output = Self> + Mul<Output = Self> + 'static
{
    /// A coding weight (always computed in `f64`) in this precision.
    fn from_weight(weight: f64) -> Self;
    /// The value in `f64`, exactly.
    fn to_f64(self) -> f64;
    /// `self * a + b` with one rounding. Only called where the CPU has FMA instructions.
    fn fused_multiply_add(self, a: Self, b: Self) -> Self;
    /// `dst.copy_from_slice(src)`, bypassing the cache where the CPU can.
    #[inline(always)]
    fn store_streaming(dst: &mut [Self], src: &[Self]) {
        dst.copy_from_slice(src);
    }
}

impl Accumulator for f32 {
    fn from_weight(weight: f64) -> Self {
        weight as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    #[inline(always)]
    fn store_streaming(dst: &mut [Self], src: &[Self]) {
        #[cfg(target_arch = "x86_64")]
        if dst.as_ptr() as usize % 16 == 0 {
            use std::arch::x86_64::{_mm_loadu_ps, _mm_stream_ps};
            let mut d = dst.chunks_exact_mut(4);
            let mut s = src.chunks_exact(4);
            for (d, s) in d.by_ref().zip(s.by_ref()) {
                // SAFETY: SSE is part of x86_64; `d` holds 4 floats at a 16-byte-aligned address.
                unsafe { _mm_stream_ps(d.as_mut_ptr(), _mm_loadu_ps(s.as_ptr())) };
            }
            d.into_remainder().copy_from_slice(s.remainder());
            return;
        }
        dst.copy_from_slice(src);
    }
    #[inline(always)]
    fn fused_multiply_add(self, a: Self, b: Self) -> Self {
        self.mul_add(a, b)
    }
}

impl Accumulator for f64 {
    fn from_weight(weight: f64) -> Self {
        weight
    }
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn fused_multiply_add(self, a: Self, b: Self) -> Self {
        self.mul_add(a, b)
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
    /// The slice itself when storage already is the accumulator type, so kernels read and
    /// write it in place instead of converting through scratch memory.
    fn as_acc(values: &[Self]) -> Option<&[Self::Acc]> {
        let _ = values;
        None
    }
    /// Mutable [`as_acc`](Self::as_acc).
    fn as_acc_mut(values: &mut [Self]) -> Option<&mut [Self::Acc]> {
        let _ = values;
        None
    }
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
    fn as_acc(values: &[Self]) -> Option<&[f32]> {
        Some(values)
    }
    fn as_acc_mut(values: &mut [Self]) -> Option<&mut [f32]> {
        Some(values)
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
    fn as_acc(values: &[Self]) -> Option<&[f64]> {
        Some(values)
    }
    fn as_acc_mut(values: &mut [Self]) -> Option<&mut [f64]> {
        Some(values)
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
