//! The GPU path: WGSL kernels from `shaders/` on wgpu, checked against [`crate::cpu`].
//!
//! - [`GpuContext`] finds an adapter (discrete, then integrated, then a CPU implementation
//!   such as lavapipe; override with [`AdapterChoice`] or `APPROXIFER_ADAPTER`).
//! - [`GpuCodec`] encodes and decodes host slices in one call.
//! - [`Kernels`] records into a command encoder of one's own, on buffers that stay on the
//!   device ([`DeviceTensor`], with a code's tables uploaded once as [`GpuCode`]).
//! - [`ShaderConfig`] composes the exact WGSL a pipeline compiles (for validation), and
//!   [`launch`] the grid and uniform block every launch of it reads, on wgpu or inside Burn.

mod context;
mod error;
mod host;
mod kernels;
pub mod launch;
mod shader;

/// The wgpu these kernels are built on (the major version burn-wgpu uses), for callers that
/// create buffers and encoders of their own.
pub use wgpu;

pub use context::{ADAPTER_ENV, AdapterChoice, GpuContext, describe_adapter, describe_adapters};
pub use error::GpuError;
pub use host::{GpuCodec, GpuElement, map_and_copy};
pub use kernels::{DeviceTensor, GpuCode, Kernels};
pub use shader::{Elem, Shader, ShaderConfig, WORKGROUP_SIZE};
