//! The `shaders/` kernels as Burn operations: a backend extension whose CubeCL implementation
//! launches the same WGSL the raw-wgpu path runs, on the buffers behind Burn's tensors.
//!
//! Burn's launcher binds a kernel's buffers in order and then one uniform block, which is the
//! convention `shaders/common.wgsl` fixes for both paths; the block's words come from
//! [`approxifer_kernels::gpu::launch`], as on raw wgpu.

use std::sync::Arc;

use approxifer_kernels::gpu::launch::{Grid, Params};
use approxifer_kernels::gpu::{Elem, Shader, ShaderConfig, WORKGROUP_SIZE};
use burn::backend::ops::{FloatTensorOps, IntTensorOps};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, backend_extension};
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::prelude::{CubeCount, CubeDim};
use burn_cubecl::cubecl::server::{KernelArguments, MetadataBindingInfo};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::template::{KernelSource, SourceKernel, SourceTemplate};
use burn_cubecl::tensor::CubeTensor;

/// One kernel launch as the extension carries it: the shader specialisation and the code's
/// table for the uniform block. Only [`super::encode`] and [`super::decode`] make one, after
/// checking the tensors, so these operations never see unchecked input.
#[derive(Clone, Debug)]
pub struct CodecLaunch {
    pub(crate) config: ShaderConfig,
    pub(crate) table: Arc<[f32]>,
}

/// Burn operations running the codec kernels. Shapes: queries `[B, K, D]` -> coded `[B, N, D]`;
/// worker outputs `[B, N, C]` with masks `[B, N]` (int, non-zero where the worker answered)
/// -> decoded `[B, K, C]`.
#[backend_extension(Cube, Fusion)]
pub trait CodecOps: Backend {
    #[fusion(dtype = queries, shape = rows_replaced(queries, launch.config.workers))]
    fn coded_encode(queries: FloatTensor<Self>, launch: CodecLaunch) -> FloatTensor<Self>;

    #[fusion(dtype = outputs, shape = rows_replaced(outputs, launch.config.queries))]
    fn coded_decode(outputs: FloatTensor<Self>, masks: IntTensor<Self>, launch: CodecLaunch) -> FloatTensor<Self>;
}

/// `shape` with its middle dimension (rows per group) set to `rows`.
fn rows_replaced(shape: &Shape, rows: u32) -> Shape {
    let mut out = shape.clone();
    out[1] = rows as usize;
    out
}

/// The WGSL of one specialisation, as a Burn kernel source.
struct CodecKernel(ShaderConfig);

impl KernelSource for CodecKernel {
    fn source(&self) -> SourceTemplate {
        SourceTemplate::new(self.0.source())
    }

    fn id(&self) -> burn_cubecl::cubecl::prelude::KernelId {
        burn_cubecl::cubecl::prelude::KernelId::new::<Self>().info(self.0)
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

impl CodecOps for CubeBackend {
    fn coded_encode(queries: FloatTensor<Self>, launch: CodecLaunch) -> FloatTensor<Self> {
        let queries = into_contiguous(queries);
        let [groups, _, row_len] = dims3(&queries);
        let shape = rows_replaced(&queries.meta.shape().clone(), launch.config.workers);
        let coded = Self::float_empty(shape, &queries.device, float_dtype(queries.dtype));
        run(&launch, &[&queries, &coded], groups, row_len, 1);
        coded
    }

    fn coded_decode(outputs: FloatTensor<Self>, masks: IntTensor<Self>, launch: CodecLaunch) -> FloatTensor<Self> {
        // The shader reads one 32-bit word per mask entry, whatever int type the device uses.
        let masks = match masks.dtype {
            DType::I32 | DType::U32 => masks,
            _ => Self::int_cast(masks, burn::tensor::IntDType::I32),
        };
        let (outputs, masks) = (into_contiguous(outputs), into_contiguous(masks));
        let [groups, _, row_len] = dims3(&outputs);
        let shape = rows_replaced(&outputs.meta.shape().clone(), launch.config.queries);
        let decoded = Self::float_empty(shape, &outputs.device, float_dtype(outputs.dtype));
        run(&launch, &[&outputs, &decoded, &masks], groups, row_len, launch.config.queries as u64);
        decoded
    }
}

fn dims3(t: &CubeTensor) -> [usize; 3] {
    let shape = t.meta.shape();
    [shape[0], shape[1], shape[2]]
}

fn float_dtype(dtype: DType) -> burn::tensor::FloatDType {
    match dtype {
        DType::F16 => burn::tensor::FloatDType::F16,
        _ => burn::tensor::FloatDType::F32,
    }
}

/// Launches `launch` over `groups` groups of `rows_per_group` output rows of `row_len`, with
/// `tensors` bound in the shader's order and the uniform block after them.
fn run(launch: &CodecLaunch, tensors: &[&CubeTensor], groups: usize, row_len: usize, rows_per_group: u64) {
    if groups == 0 {
        return;
    }
    let client = tensors[0].client.clone();
    let packed_row = (row_len / launch.config.packing as usize) as u64;
    // 65535 workgroups per dimension is WebGPU's guaranteed limit. `encode` and `decode` (the
    // only makers of a `CodecLaunch`) checked that the grid fits (`check_launch`).
    let grid = Grid::cover(groups as u64 * rows_per_group * packed_row, u32::from(u16::MAX))
        .expect("batch size checked before launch");
    let params =
        Params { groups: groups as u32, row_len: packed_row as u32, grid_width: grid.width, ..Params::default() };
    let words = params.info_words(&launch.table);
    // CubeCL's info block is a list of u64s written out as bytes: pair the u32 words up.
    let info: Vec<u64> =
        words.chunks(2).map(|pair| u64::from(pair[0]) | (u64::from(*pair.get(1).unwrap_or(&0)) << 32)).collect();
    let mut args = KernelArguments::new();
    for t in tensors {
        args = args.with_buffer(t.handle.clone().binding());
    }
    let kernel = SourceKernel::new(CodecKernel(launch.config), CubeDim::new_1d(WORKGROUP_SIZE));
    client.launch(
        Box::new(kernel),
        CubeCount::Static(grid.x, grid.y, 1),
        args.with_info(MetadataBindingInfo::custom(info)),
    );
}

/// The storage type of the kernels for a Burn dtype, if they have one.
pub(crate) fn kernel_elem(dtype: DType) -> Option<Elem> {
    match dtype {
        DType::F32 => Some(Elem::F32),
        DType::F16 => Some(Elem::F16),
        _ => None,
    }
}

/// The specialisation for `shader` on rows of `row_len`.
pub(crate) fn config(shader: Shader, elem: Elem, row_len: usize, queries: u32, workers: u32) -> ShaderConfig {
    let packing = if row_len % 4 == 0 { 4 } else { 1 };
    ShaderConfig { shader, elem, packing, queries, workers }
}
