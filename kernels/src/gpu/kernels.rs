//! The encode and decode kernels: pipelines built once, dispatches chunked to the adapter's
//! limits and recorded into the caller's command encoder.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::Mutex;

use wgpu::util::DeviceExt;

use super::context::GpuContext;
use super::error::GpuError;
use super::launch::{Grid, Params, info_bytes, padded_f32};
use super::shader::{Elem, Shader, ShaderConfig};
use crate::code::Code;
use crate::shape::{expect_len, whole_groups};

/// A code's tables as the kernels read them: the `N x (K + T)` encode matrix and the `K x N` node
/// differences `alpha_j - beta_n` from which the decode kernel forms its weights, both the `f64`
/// tables of [`Code`] rounded to `f32` and padded to whole vec4s. They travel in each launch's
/// uniform block (see [`super::launch`]), so they must fit the uniform binding limit.
#[derive(Clone, Debug)]
pub struct GpuCode {
    queries: u32,
    sources: u32,
    workers: u32,
    weights: Vec<f32>,
    differences: Vec<f32>,
}

impl GpuCode {
    /// `code`'s tables, checked against `ctx`'s uniform binding limit (64 KiB on most
    /// adapters: N x K up to 16376).
    pub fn new(ctx: &GpuContext, code: &Code) -> Result<Self, GpuError> {
        Self::with_uniform_limit(code, ctx.device.limits().max_uniform_buffer_binding_size, ctx.adapter_name())
    }

    /// `code`'s tables, checked against a uniform binding limit of `limit` bytes on `adapter`
    /// (for launchers that do not hold a [`GpuContext`]).
    pub fn with_uniform_limit(code: &Code, limit: u64, adapter: &str) -> Result<Self, GpuError> {
        let weights = padded_f32(code.encode_matrix().as_slice());
        let differences = padded_f32(code.data_minus_worker());
        let bytes = info_bytes(weights.len());
        if bytes > limit {
            let adapter = adapter.into();
            return Err(GpuError::BufferTooLarge { what: "the code's tables (uniform)", bytes, limit, adapter });
        }
        Ok(GpuCode {
            queries: code.params().queries() as u32,
            sources: code.params().sources() as u32,
            workers: code.params().workers() as u32,
            weights,
            differences,
        })
    }

    /// `K`.
    pub fn queries(&self) -> u32 {
        self.queries
    }

    /// `K + T`: the rows the encode kernel mixes per group (queries, then masks).
    pub fn sources(&self) -> u32 {
        self.sources
    }

    /// `N`.
    pub fn workers(&self) -> u32 {
        self.workers
    }

    /// The encode kernel's table: `E`, `[N, K + T]` row-major, padded.
    pub fn encode_table(&self) -> &[f32] {
        &self.weights
    }

    /// The decode kernel's table: `alpha_j - beta_n`, `[K, N]` row-major, padded.
    pub fn decode_table(&self) -> &[f32] {
        &self.differences
    }
}

/// A region of a device buffer holding a tensor of `len` elements of `elem`.
#[derive(Clone, Copy, Debug)]
pub struct DeviceTensor<'a> {
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset of the first element; a multiple of the element the kernel reads (16 bytes
    /// for vec4 f32 rows). Bindings are aligned by the kernels themselves.
    pub offset: u64,
    pub elem: Elem,
    pub len: usize,
}

impl<'a> DeviceTensor<'a> {
    /// The whole buffer from its start, holding `len` elements.
    pub fn new(buffer: &'a wgpu::Buffer, elem: Elem, len: usize) -> Self {
        DeviceTensor { buffer, offset: 0, elem, len }
    }
}

/// Pipelines of both kernels, built on first use for each `(shader, dtype, packing, K, N)`
/// and cached. One per device.
#[derive(Debug, Default)]
pub struct Kernels {
    pipelines: Mutex<HashMap<ShaderConfig, wgpu::ComputePipeline>>,
}

/// What one kernel launch covers: `groups` groups of `rows_per_group` output rows (one
/// invocation per packed element of each) of `row_len` elements, and the constant table that
/// follows the params in its uniform block.
struct Launch<'t> {
    config: ShaderConfig,
    groups: usize,
    row_len: usize,
    rows_per_group: u64,
    table: &'t [f32],
}

/// One binding of a chunked dispatch: a tensor and its bytes per group.
struct Binding<'a> {
    what: &'static str,
    buffer: &'a wgpu::Buffer,
    offset: u64,
    /// Bytes of the whole tensor, and of one group of it.
    bytes: u64,
    group_bytes: u64,
    /// Bytes of the element the shader indexes (a packed vec4, a scalar, a mask word).
    unit: u64,
}

impl<'a> Binding<'a> {
    fn tensor(what: &'static str, tensor: DeviceTensor<'a>, group_elems: usize, packing: u32) -> Self {
        let size = tensor.elem.size();
        let (bytes, group_bytes) = (tensor.len as u64 * size, group_elems as u64 * size);
        Binding {
            what,
            buffer: tensor.buffer,
            offset: tensor.offset,
            bytes,
            group_bytes,
            unit: size * u64::from(packing),
        }
    }
}

impl Kernels {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn pipeline(&self, ctx: &GpuContext, config: ShaderConfig) -> wgpu::ComputePipeline {
        let mut cache = self.pipelines.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        cache
            .entry(config)
            .or_insert_with(|| {
                let descriptor = wgpu::ShaderModuleDescriptor {
                    label: Some(config.shader.name()),
                    source: wgpu::ShaderSource::Wgsl(config.source().into()),
                };
                // Every loop in `shaders/` runs a constant number of times (K or N), so the
                // guard wgpu adds against infinite loops buys nothing, and it hides the trip
                // count from the driver's compiler, which then cannot unroll (encode ran at
                // 0.5x the copy kernel on lavapipe with it). Bounds checks stay on.
                let checks =
                    wgpu::ShaderRuntimeChecks { force_loop_bounding: false, ..wgpu::ShaderRuntimeChecks::checked() };
                // SAFETY: `force_loop_bounding` is the only check turned off, and the shaders
                // are ours with bounded loops (see above); bounds checks remain.
                let module = unsafe { ctx.device.create_shader_module_trusted(descriptor, checks) };
                ctx.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(config.shader.name()),
                    layout: None,
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: Default::default(),
                    cache: None,
                })
            })
            .clone()
    }

    /// Records `coded = encode(sources)` for `[groups, K + T, row_len]` sources (each group's
    /// `K` queries then its `T` masks; just the queries when `T = 0`) into
    /// `[groups, N, row_len]` coded queries.
    pub fn record_encode(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        code: &GpuCode,
        sources: DeviceTensor<'_>,
        coded: DeviceTensor<'_>,
        row_len: usize,
    ) -> Result<(), GpuError> {
        let (rows, n) = (code.sources as usize, code.workers as usize);
        let groups = whole_groups("queries", sources.len, rows, row_len)?;
        expect_len("coded queries", coded.len, groups * n * row_len)?;
        let elem = same_elem(sources.elem, coded.elem)?;
        let packing = packing(row_len);
        let bindings = [
            Binding::tensor("queries", sources, rows * row_len, packing),
            Binding::tensor("coded queries", coded, n * row_len, packing),
        ];
        let config =
            ShaderConfig { shader: Shader::Encode, elem, packing, queries: code.sources, workers: code.workers };
        let launch = Launch { config, groups, row_len, rows_per_group: 1, table: &code.weights };
        self.dispatch(ctx, encoder, &bindings, launch)
    }

    /// Records `dst = src` with the copy kernel, viewing both as rows of `row_len` elements:
    /// the plain-bandwidth reference for the benchmarks.
    pub fn record_copy(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        src: DeviceTensor<'_>,
        dst: DeviceTensor<'_>,
        row_len: usize,
    ) -> Result<(), GpuError> {
        let groups = whole_groups("copy source", src.len, 1, row_len)?;
        expect_len("copy destination", dst.len, src.len)?;
        let elem = same_elem(src.elem, dst.elem)?;
        let packing = packing(row_len);
        let bindings = [
            Binding::tensor("copy source", src, row_len, packing),
            Binding::tensor("copy destination", dst, row_len, packing),
        ];
        let config = ShaderConfig { shader: Shader::Copy, elem, packing, queries: 1, workers: 1 };
        self.dispatch(ctx, encoder, &bindings, Launch { config, groups, row_len, rows_per_group: 1, table: &[] })
    }

    /// Records `decoded = decode(outputs)` for `[groups, N, row_len]` worker outputs and
    /// `[groups, N]` masks (`u32`, zero where the worker did not answer) into
    /// `[groups, K, row_len]`. The masks must already be valid (see [`Code::responders`]).
    #[allow(clippy::too_many_arguments)]
    pub fn record_decode(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        code: &GpuCode,
        outputs: DeviceTensor<'_>,
        masks: &wgpu::Buffer,
        decoded: DeviceTensor<'_>,
        row_len: usize,
    ) -> Result<(), GpuError> {
        let (k, n) = (code.queries as usize, code.workers as usize);
        let groups = whole_groups("worker outputs", outputs.len, n, row_len)?;
        expect_len("decoded outputs", decoded.len, groups * k * row_len)?;
        let elem = same_elem(outputs.elem, decoded.elem)?;
        let packing = packing(row_len);
        let (mask_bytes, group_mask_bytes) = ((groups * n * 4) as u64, (n * 4) as u64);
        let bindings = [
            Binding::tensor("worker outputs", outputs, n * row_len, packing),
            Binding::tensor("decoded outputs", decoded, k * row_len, packing),
            Binding {
                what: "responder masks",
                buffer: masks,
                offset: 0,
                bytes: mask_bytes,
                group_bytes: group_mask_bytes,
                unit: 4,
            },
        ];
        let config =
            ShaderConfig { shader: Shader::Decode, elem, packing, queries: code.queries, workers: code.workers };
        let launch = Launch { config, groups, row_len, rows_per_group: k as u64, table: &code.differences };
        self.dispatch(ctx, encoder, &bindings, launch)
    }

    /// Splits the batch into chunks whose every binding fits the adapter's storage binding
    /// limit and starts at an aligned offset, and records one dispatch per chunk. `bindings` are
    /// the storage tensors in the shader's binding order; the uniform `Info` block (params, then
    /// the launch's table) comes last.
    fn dispatch(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        bindings: &[Binding<'_>],
        launch: Launch<'_>,
    ) -> Result<(), GpuError> {
        let Launch { config, groups, row_len, rows_per_group, table } = launch;
        if config.elem == Elem::F16 && !ctx.supports_f16() {
            return Err(GpuError::F16Unsupported { adapter: ctx.adapter_name().into() });
        }
        for b in bindings {
            let available = b.buffer.size().saturating_sub(b.offset);
            if b.bytes > available {
                return Err(GpuError::BufferTooSmall { what: b.what, needed: b.bytes, available, offset: b.offset });
            }
        }
        if groups == 0 {
            return Ok(());
        }
        let packed_row = (row_len / config.packing as usize) as u64;
        let invocations_per_group = rows_per_group * packed_row;
        let limits = ctx.device.limits();
        let max_per_dim = limits.max_compute_workgroups_per_dimension;
        // Keep each chunk's grid within the adapter's two dimensions.
        let grid_cap =
            (u64::from(max_per_dim).pow(2) * u64::from(super::WORKGROUP_SIZE)) / invocations_per_group.max(1);
        let chunk = self.groups_per_chunk(ctx, bindings, invocations_per_group)?.min(grid_cap.max(1));
        let pipeline = self.pipeline(ctx, config);
        let layout = pipeline.get_bind_group_layout(0);
        let align = u64::from(limits.min_storage_buffer_offset_alignment);

        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(config.shader.name()),
            timestamp_writes: None,
        });
        pass.set_pipeline(&pipeline);
        let groups = groups as u64;
        let mut first = 0;
        while first < groups {
            let count = chunk.min(groups - first);
            let grid = Grid::cover(count * invocations_per_group, max_per_dim)
                .ok_or_else(|| GpuError::Device(format!("{count} groups need more workgroups than the adapter has")))?;
            // Each binding starts at the aligned offset at or below the chunk's first byte; the
            // shader skips the difference, given in packed elements.
            let mut bases = [0u32; 3];
            let mut entries: Vec<wgpu::BindGroupEntry<'_>> = Vec::with_capacity(bindings.len() + 1);
            for (i, b) in bindings.iter().enumerate() {
                let start = b.offset + first * b.group_bytes;
                let aligned = start / align * align;
                bases[i.min(2)] = ((start - aligned) / b.unit) as u32;
                let size = (start - aligned + count * b.group_bytes).next_multiple_of(4).min(b.buffer.size() - aligned);
                let resource = wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.buffer,
                    offset: aligned,
                    size: NonZeroU64::new(size),
                });
                entries.push(wgpu::BindGroupEntry { binding: i as u32, resource });
            }
            let params = Params {
                groups: count as u32,
                row_len: packed_row as u32,
                grid_width: grid.width,
                input_base: bases[0],
                output_base: bases[1],
                mask_base: bases[2],
            };
            let info = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("approxifer launch info"),
                contents: bytemuck::cast_slice(&params.info_words(table)),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            entries.push(wgpu::BindGroupEntry { binding: entries.len() as u32, resource: info.as_entire_binding() });
            let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &layout,
                entries: &entries,
            });
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(grid.x, grid.y, 1);
            first += count;
        }
        Ok(())
    }

    /// The most groups one dispatch may cover: every chunked binding, from the aligned offset
    /// below its first byte, within the storage binding limit, and the invocation count and
    /// packed offsets within `u32`.
    fn groups_per_chunk(
        &self,
        ctx: &GpuContext,
        bindings: &[Binding<'_>],
        invocations_per_group: u64,
    ) -> Result<u64, GpuError> {
        let limits = ctx.device.limits();
        let limit = limits.max_storage_buffer_binding_size.min(u64::from(u32::MAX));
        let align = u64::from(limits.min_storage_buffer_offset_alignment);
        let mut chunk = (u64::from(u32::MAX) / 2) / invocations_per_group.max(1);
        for b in bindings {
            if b.offset % b.unit != 0 {
                return Err(GpuError::Device(format!(
                    "{}: offset {} is not a multiple of the {}-byte element the kernel reads",
                    b.what, b.offset, b.unit
                )));
            }
            let room = limit.saturating_sub(align + 4);
            if b.group_bytes > room {
                return Err(GpuError::GroupTooLarge {
                    what: b.what,
                    bytes: b.group_bytes,
                    limit,
                    adapter: ctx.adapter_name().into(),
                });
            }
            chunk = chunk.min(room / b.group_bytes);
        }
        Ok(chunk)
    }
}

/// 4 (vec4 loads and stores) when rows are a multiple of 4 long, else 1.
fn packing(row_len: usize) -> u32 {
    if row_len % 4 == 0 { 4 } else { 1 }
}

fn same_elem(input: Elem, output: Elem) -> Result<Elem, GpuError> {
    if input != output {
        return Err(GpuError::Device(format!(
            "input is {input:?} but output is {output:?}; both must share one dtype"
        )));
    }
    Ok(input)
}
