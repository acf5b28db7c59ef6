//! Coded inference on one device: encode, the model's forward pass and decode run on Burn's
//! wgpu tensors, with no read-back between the stages.
//!
//! - [`FusedCode`] is a [`Code`] prepared for launches (its tables checked against the
//!   uniform limit once).
//! - [`encode`] and [`decode`] run `shaders/encode.wgsl` and `shaders/decode.wgsl` on Burn
//!   tensors through a backend extension ([`ops`]); they take and return [`Tensor`]s, so they
//!   compose with any Burn code and stay lazy under Burn's fusion.
//! - [`CodedRunner`] strings them around a model: `infer(queries, masks) -> predictions`.
//!
//! Burn's wgpu devices run the WGSL kernels. Burn's flex device (the CPU backend, what a
//! machine with no Vulkan driver or only a CPU one runs models on) runs their CPU twins on the
//! tensors' values, in host memory there already: no transfer either way. Other devices are a
//! typed error.

pub mod ops;
mod runner;

use std::sync::Arc;

use approxifer_kernels::gpu::launch::Grid;
use approxifer_kernels::gpu::{GpuCode, GpuError, Shader};
use approxifer_kernels::{Code, Error as CodecError, cpu};
use burn::backend::DispatchDevice;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

pub use ops::{CodecLaunch, CodecOps};
pub use runner::{CodedRunner, Model};

/// Why a fused operation refused its input. Nothing is launched when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum FusedError {
    /// Bad parameters or masks, as the CPU path would report them.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The code's tables do not fit a launch.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// A tensor on a device the fused stages cannot run on.
    #[error(
        "{what} is on {device}; the fused stages run on Burn's wgpu devices (Device::wgpu) and its flex device, without autodiff"
    )]
    Device { what: &'static str, device: String },
    /// A flex tensor whose values could not be read for the CPU twins.
    #[error("reading {what}: {message}")]
    Read { what: &'static str, message: String },
    /// A tensor whose dtype the kernels do not store.
    #[error("{what} has dtype {dtype:?}; the fused kernels take f32 or f16")]
    DType { what: &'static str, dtype: DType },
    /// A tensor of the wrong shape.
    #[error("{what} has shape {actual:?}; expected {expected}")]
    Shape { what: &'static str, expected: String, actual: Vec<usize> },
    /// A batch whose launch would exceed the 2D grid or 32-bit indexing.
    #[error("{what}: {elements} elements in one launch is more than the kernels index; split the batch")]
    TooLarge { what: &'static str, elements: u64 },
}

/// A [`Code`] prepared for fused launches: its tables in the form the kernels read.
#[derive(Clone, Debug)]
pub struct FusedCode {
    code: Arc<Code>,
    encode_table: Arc<[f32]>,
    decode_table: Arc<[f32]>,
}

impl FusedCode {
    /// Prepares `code`. Its tables travel in each launch's uniform block, which must fit
    /// WebGPU's guaranteed 64 KiB (N x K up to 16376).
    pub fn new(code: Code) -> Result<Self, FusedError> {
        let limit = burn_cubecl::cubecl::wgpu::wgpu::Limits::default().max_uniform_buffer_binding_size;
        let tables = GpuCode::with_uniform_limit(&code, limit, "any wgpu device")?;
        Ok(FusedCode {
            encode_table: tables.encode_table().into(),
            decode_table: tables.decode_table().into(),
            code: Arc::new(code),
        })
    }

    /// The code.
    pub fn code(&self) -> &Code {
        &self.code
    }

    /// The encode launch that forms only the coded queries of `workers` (the shader's `N` is
    /// then `workers.len()`, its table those rows of the encode matrix).
    fn encode_rows_launch(
        &self,
        workers: &[usize],
        elem: approxifer_kernels::gpu::Elem,
        row_len: usize,
    ) -> Result<CodecLaunch, FusedError> {
        let rows = self.code.encode_rows(workers)?;
        let sources = self.code.params().sources() as u32;
        let config = ops::config(Shader::Encode, elem, row_len, sources, workers.len() as u32);
        Ok(CodecLaunch { config, table: approxifer_kernels::gpu::launch::padded_f32(rows.as_slice()).into() })
    }

    fn launch(&self, shader: Shader, elem: approxifer_kernels::gpu::Elem, row_len: usize) -> CodecLaunch {
        let p = self.code.params();
        let (table, rows) = match shader {
            Shader::Decode => (self.decode_table.clone(), p.queries()),
            _ => (self.encode_table.clone(), p.sources()),
        };
        CodecLaunch { config: ops::config(shader, elem, row_len, rows as u32, p.workers() as u32), table }
    }
}

/// Encodes `[B, K, D]` queries into `[B, N, D]` coded queries on the queries' device. For a
/// code without privacy; a private code also takes masks ([`encode_masked`]).
pub fn encode(queries: Tensor<3>, code: &FusedCode) -> Result<Tensor<3>, FusedError> {
    encode_masked(queries, None, code)
}

/// Encodes `[B, K, D]` queries and, for a private code, `[B, T, D]` masks (see
/// [`approxifer_kernels::privacy`]) into `[B, N, D]` coded queries on the queries' device.
/// Each group's masks are appended to its queries on the device (the kernel reads one
/// `[K + T, D]` block per group).
pub fn encode_masked(queries: Tensor<3>, masks: Option<Tensor<3>>, code: &FusedCode) -> Result<Tensor<3>, FusedError> {
    let n = code.code.params().workers();
    let [groups, _, row_len] = queries.dims();
    let place = place("queries", &queries.device(), queries.dtype())?;
    let masks = checked_masks(&queries, masks, code)?;
    let Place::Wgsl(elem) = place else {
        let all: Vec<usize> = (0..n).collect();
        return encode_on_host(queries, masks, code, &all);
    };
    check_launch("coded queries", groups, n, row_len)?;
    let launch = code.launch(Shader::Encode, elem, row_len);
    let sources = sources(queries, masks).into_dispatch();
    Ok(Tensor::from_dispatch(burn::backend::Dispatch::coded_encode(sources, launch)))
}

/// Encodes `[B, K, D]` queries into the coded queries of `workers` only, `[B, M, D]` with
/// `M = workers.len()` in the order given, on the queries' device: a device hosting `M` of a
/// group's `N` workers forms exactly their rows. Rows are those of [`Code::encode_rows`];
/// `masks` as in [`encode_masked`].
pub fn encode_rows(
    queries: Tensor<3>,
    masks: Option<Tensor<3>>,
    code: &FusedCode,
    workers: &[usize],
) -> Result<Tensor<3>, FusedError> {
    let [groups, _, row_len] = queries.dims();
    let place = place("queries", &queries.device(), queries.dtype())?;
    if workers.is_empty() {
        return Err(FusedError::Shape { what: "workers", expected: "at least one worker".into(), actual: vec![0] });
    }
    let masks = checked_masks(&queries, masks, code)?;
    let Place::Wgsl(elem) = place else {
        return encode_on_host(queries, masks, code, workers);
    };
    check_launch("coded queries", groups, workers.len(), row_len)?;
    let launch = code.encode_rows_launch(workers, elem, row_len)?;
    let sources = sources(queries, masks).into_dispatch();
    Ok(Tensor::from_dispatch(burn::backend::Dispatch::coded_encode(sources, launch)))
}

/// `masks` once checked against the code and `[B, K, D]` `queries`: `[B, T, D]` on their
/// device with their dtype for a private code, none otherwise.
fn checked_masks(
    queries: &Tensor<3>,
    masks: Option<Tensor<3>>,
    code: &FusedCode,
) -> Result<Option<Tensor<3>>, FusedError> {
    let (k, t) = (code.code.params().queries(), code.code.params().privacy());
    let [groups, _, row_len] = queries.dims();
    check_rows("queries", &queries.dims(), k, "[B, K, D]")?;
    match (t, masks) {
        (0, None) => Ok(None),
        (0, Some(_)) => Err(CodecError::MasksMismatch { privacy: 0, what: "it takes no masks" }.into()),
        (privacy, None) => {
            Err(CodecError::MasksMismatch { privacy, what: "encode it with masks (encode_masked)" }.into())
        }
        (_, Some(masks)) => {
            let dims = masks.dims();
            if dims != [groups, t, row_len] {
                let expected = format!("[B, T, D] = [{groups}, {t}, {row_len}] like the queries");
                return Err(FusedError::Shape { what: "masks", expected, actual: dims.to_vec() });
            }
            if masks.dtype() != queries.dtype() {
                return Err(FusedError::DType { what: "masks (unlike the queries)", dtype: masks.dtype() });
            }
            if masks.device() != queries.device() {
                return Err(FusedError::Device {
                    what: "masks (unlike the queries)",
                    device: format!("{:?}", masks.device()),
                });
            }
            Ok(Some(masks))
        }
    }
}

/// The encode kernel's input: `[B, K, D]` queries, then each group's `T` masks.
fn sources(queries: Tensor<3>, masks: Option<Tensor<3>>) -> Tensor<3> {
    match masks {
        Some(masks) => Tensor::cat(vec![queries, masks], 1),
        None => queries,
    }
}

/// Whether `device` runs the WGSL kernels (a Burn wgpu device without autodiff).
pub fn runs_wgsl(device: &Device) -> bool {
    matches!(place("", device, DType::F32), Ok(Place::Wgsl(_)))
}

/// The encode kernel's CPU twin: `[B, K, D]` queries and checked masks into the coded queries
/// of `workers`, `[B, M, D]`, on the queries' (flex) device.
fn encode_on_host(
    queries: Tensor<3>,
    masks: Option<Tensor<3>>,
    code: &FusedCode,
    workers: &[usize],
) -> Result<Tensor<3>, FusedError> {
    let [groups, _, row_len] = queries.dims();
    let (device, dtype) = (queries.device(), queries.dtype());
    let masks = masks.map(|m| read("masks", m)).transpose()?.unwrap_or_default();
    let mut coded = vec![0.0; groups * workers.len() * row_len];
    cpu::encode_rows_masked(&code.code, workers, &read("queries", queries)?, &masks, row_len, &mut coded)?;
    Ok(Tensor::from_data(TensorData::new(coded, [groups, workers.len(), row_len]), (&device, dtype)))
}

/// A flex tensor's values, as `f32`.
fn read<const D: usize>(what: &'static str, tensor: Tensor<D>) -> Result<Vec<f32>, FusedError> {
    tensor.try_into_vec_as::<f32>().map_err(|e| FusedError::Read { what, message: format!("{e:?}") })
}

/// Decodes `[B, N, C]` worker outputs into `[B, K, C]` predictions, with `masks` (`B x N`,
/// row-major) true where the worker answered. Rows of workers that did not answer are never
/// read. The masks are checked as on the CPU (at least `N - S` per group) before any launch.
pub fn decode(outputs: Tensor<3>, masks: &[bool], code: &FusedCode) -> Result<Tensor<3>, FusedError> {
    let (k, n) = (code.code.params().queries(), code.code.params().workers());
    let [groups, _, classes] = outputs.dims();
    check_rows("worker outputs", &outputs.dims(), n, "[B, N, C]")?;
    let device = outputs.device();
    let place = place("worker outputs", &device, outputs.dtype())?;
    let mask_groups = code.code.check_masks(masks)?;
    if mask_groups != groups {
        return Err(
            CodecError::ShapeMismatch { what: "responder masks", expected: groups * n, actual: masks.len() }.into()
        );
    }
    let Place::Wgsl(elem) = place else {
        let dtype = outputs.dtype();
        let mut decoded = vec![0.0; groups * k * classes];
        cpu::decode(&code.code, &read("worker outputs", outputs)?, classes, masks, &mut decoded)?;
        return Ok(Tensor::from_data(TensorData::new(decoded, [groups, k, classes]), (&device, dtype)));
    };
    check_launch("decoded outputs", groups, k, classes)?;
    let words: Vec<i32> = masks.iter().map(|&m| i32::from(m)).collect();
    let masks = Tensor::<2, Int>::from_data(TensorData::new(words, [groups, n]), &device);
    let launch = code.launch(Shader::Decode, elem, classes);
    let decoded = burn::backend::Dispatch::coded_decode(outputs.into_dispatch(), masks.into_dispatch(), launch);
    Ok(Tensor::from_dispatch(decoded))
}

fn check_rows(what: &'static str, dims: &[usize; 3], rows: usize, layout: &str) -> Result<(), FusedError> {
    if dims[1] != rows || dims[2] == 0 {
        return Err(FusedError::Shape {
            what,
            expected: format!("{layout} with {rows} rows per group"),
            actual: dims.to_vec(),
        });
    }
    Ok(())
}

/// Where a fused stage runs.
enum Place {
    /// The WGSL kernel, storing this element type.
    Wgsl(approxifer_kernels::gpu::Elem),
    /// The kernel's CPU twin, on a flex tensor's values.
    Host,
}

/// Where a tensor on `device` with `dtype` is coded: WGSL on a wgpu device, the CPU twins on
/// flex, both for the element types the kernels store; anything else is refused.
fn place(what: &'static str, device: &Device, dtype: DType) -> Result<Place, FusedError> {
    let elem = || ops::kernel_elem(dtype).ok_or(FusedError::DType { what, dtype });
    match device.as_dispatch() {
        DispatchDevice::Cube(cube) if cube.runtime() == burn_cubecl::cubecl::RuntimeId::Wgpu => {
            Ok(Place::Wgsl(elem()?))
        }
        DispatchDevice::Flex(_) => elem().map(|_| Place::Host),
        _ => Err(FusedError::Device { what, device: format!("{device:?}") }),
    }
}

/// Output rows of `groups x rows x row_len` within one launch's 32-bit indices and 2D grid.
fn check_launch(what: &'static str, groups: usize, rows: usize, row_len: usize) -> Result<(), FusedError> {
    let elements = (groups as u64) * (rows as u64) * (row_len as u64);
    if elements > u64::from(u32::MAX / 2) || Grid::cover(elements, u32::from(u16::MAX)).is_none() {
        return Err(FusedError::TooLarge { what, elements });
    }
    Ok(())
}
