//! One-call helpers: host slices in, host vectors out, with the kernels in between.

use half::f16;
use wgpu::util::DeviceExt;

use super::context::GpuContext;
use super::error::GpuError;
use super::kernels::{DeviceTensor, GpuCode, Kernels};
use super::shader::Elem;
use crate::code::Code;
use crate::cpu::Element;
use crate::error::Error;
use crate::shape::{expect_len, whole_groups};

/// Storage types the GPU kernels take.
pub trait GpuElement: Element + bytemuck::Pod {
    /// The kernel dtype.
    const ELEM: Elem;
}

impl GpuElement for f32 {
    const ELEM: Elem = Elem::F32;
}

impl GpuElement for f16 {
    const ELEM: Elem = Elem::F16;
}

/// A device with the kernels' pipelines: the GPU counterpart of [`crate::cpu`].
#[derive(Debug)]
pub struct GpuCodec {
    ctx: GpuContext,
    kernels: Kernels,
}

impl GpuCodec {
    /// Kernels on `ctx`'s device.
    pub fn new(ctx: GpuContext) -> Self {
        GpuCodec { ctx, kernels: Kernels::new() }
    }

    /// The device.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// The pipelines, for recording into a command encoder of one's own.
    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// Encodes `[B, K, row_len]` queries into `[B, N, row_len]` on the device. For a code
    /// without privacy; a private code's encoder also takes masks ([`Self::encode_masked`]).
    pub fn encode<T: GpuElement>(&self, code: &Code, queries: &[T], row_len: usize) -> Result<Vec<T>, GpuError> {
        if code.params().privacy() > 0 {
            let privacy = code.params().privacy();
            return Err(Error::MasksMismatch { privacy, what: "encode it with masks (encode_masked)" }.into());
        }
        self.encode_masked(code, queries, &[], row_len)
    }

    /// Encodes `[B, K, row_len]` queries with `[B, T, row_len]` masks into `[B, N, row_len]`
    /// on the device: the twin of [`crate::cpu::encode_masked`]. Each group's queries and masks
    /// are uploaded as one `[K + T, row_len]` block, the encode kernel's input.
    pub fn encode_masked<T: GpuElement>(
        &self,
        code: &Code,
        queries: &[T],
        masks: &[T],
        row_len: usize,
    ) -> Result<Vec<T>, GpuError> {
        let (k, t, n) = (code.params().queries(), code.params().privacy(), code.params().workers());
        let groups = whole_groups("queries", queries.len(), k, row_len)?;
        if t == 0 && !masks.is_empty() {
            return Err(Error::MasksMismatch { privacy: 0, what: "it takes no masks" }.into());
        }
        expect_len("masks", masks.len(), groups * t * row_len)?;
        let len = groups * n * row_len;
        if groups == 0 {
            return Ok(Vec::new());
        }
        let sources: std::borrow::Cow<'_, [T]> = if t == 0 {
            queries.into()
        } else {
            let group_queries = queries.chunks_exact(k * row_len);
            group_queries.zip(masks.chunks_exact(t * row_len)).flat_map(|(q, m)| q.iter().chain(m)).copied().collect()
        };
        let gpu_code = GpuCode::new(&self.ctx, code)?;
        let input = self.upload("queries", bytemuck::cast_slice(&sources))?;
        let output = self.output("coded queries", len * size_of::<T>())?;
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        self.kernels.record_encode(
            &self.ctx,
            &mut encoder,
            &gpu_code,
            DeviceTensor::new(&input, T::ELEM, sources.len()),
            DeviceTensor::new(&output, T::ELEM, len),
            row_len,
        )?;
        self.read_back(encoder, &output, len)
    }

    /// Decodes `[B, N, row_len]` worker outputs into `[B, K, row_len]` on the device, with
    /// `masks[b, n]` true where worker `n` answered for group `b`. The masks are checked
    /// exactly as [`crate::cpu::decode`] checks them.
    pub fn decode<T: GpuElement>(
        &self,
        code: &Code,
        outputs: &[T],
        row_len: usize,
        masks: &[bool],
    ) -> Result<Vec<T>, GpuError> {
        let (k, n) = (code.params().queries(), code.params().workers());
        let groups = whole_groups("worker outputs", outputs.len(), n, row_len)?;
        expect_len("responder masks", masks.len(), groups * n)?;
        code.check_masks(masks)?;
        let len = groups * k * row_len;
        if groups == 0 {
            return Ok(Vec::new());
        }
        let gpu_code = GpuCode::new(&self.ctx, code)?;
        let input = self.upload("worker outputs", bytemuck::cast_slice(outputs))?;
        let mask_words: Vec<u32> = masks.iter().map(|&m| u32::from(m)).collect();
        let mask_buffer = self.upload("responder masks", bytemuck::cast_slice(&mask_words))?;
        let output = self.output("decoded outputs", len * size_of::<T>())?;
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        self.kernels.record_decode(
            &self.ctx,
            &mut encoder,
            &gpu_code,
            DeviceTensor::new(&input, T::ELEM, outputs.len()),
            &mask_buffer,
            DeviceTensor::new(&output, T::ELEM, len),
            row_len,
        )?;
        self.read_back(encoder, &output, len)
    }

    fn check_size(&self, what: &'static str, bytes: u64) -> Result<(), GpuError> {
        let limit = self.ctx.device.limits().max_buffer_size;
        if bytes > limit {
            return Err(GpuError::BufferTooLarge { what, bytes, limit, adapter: self.ctx.adapter_name().into() });
        }
        Ok(())
    }

    /// A storage buffer holding `bytes` (padded to the 4-byte copy alignment).
    fn upload(&self, what: &'static str, bytes: &[u8]) -> Result<wgpu::Buffer, GpuError> {
        self.check_size(what, bytes.len() as u64)?;
        let padded;
        let contents = if bytes.len() % 4 == 0 {
            bytes
        } else {
            padded = [bytes, &[0u8; 3][..4 - bytes.len() % 4]].concat();
            &padded
        };
        Ok(self.ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(what),
            contents,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        }))
    }

    /// An output storage buffer of `bytes` (padded to 4).
    fn output(&self, what: &'static str, bytes: usize) -> Result<wgpu::Buffer, GpuError> {
        let size = (bytes as u64).next_multiple_of(4);
        self.check_size(what, size)?;
        Ok(self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        }))
    }

    /// Submits `encoder` with a copy of `buffer` into a mappable buffer, waits, and returns
    /// the first `len` elements.
    fn read_back<T: GpuElement>(
        &self,
        mut encoder: wgpu::CommandEncoder,
        buffer: &wgpu::Buffer,
        len: usize,
    ) -> Result<Vec<T>, GpuError> {
        let staging = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("approxifer read-back"),
            size: buffer.size(),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, buffer.size());
        self.ctx.queue.submit([encoder.finish()]);
        map_and_copy(&self.ctx, &staging, len)
    }
}

/// Maps `staging`, waits for the device and copies out `len` elements.
pub fn map_and_copy<T: bytemuck::Pod>(
    ctx: &GpuContext,
    staging: &wgpu::Buffer,
    len: usize,
) -> Result<Vec<T>, GpuError> {
    let slice = staging.slice(..);
    let (sender, receiver) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |result| {
        let _ = sender.send(result);
    });
    ctx.wait()?;
    receiver
        .recv()
        .map_err(|e| GpuError::Device(e.to_string()))?
        .map_err(|e| GpuError::Device(format!("mapping the read-back buffer failed: {e}")))?;
    let values = {
        let bytes =
            slice.get_mapped_range().map_err(|e| GpuError::Device(format!("reading the mapped buffer failed: {e}")))?;
        // Copy through a typed vector: the mapping is only guaranteed 4-byte aligned.
        let mut values = vec![T::zeroed(); len];
        bytemuck::cast_slice_mut::<T, u8>(&mut values).copy_from_slice(&bytes[..len * size_of::<T>()]);
        values
    };
    staging.unmap();
    Ok(values)
}
