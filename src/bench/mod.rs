//! Benchmarks. `approxifer bench kernels` (here): throughput of the codec kernels next to what
//! bounds them and what a user would do without them, measured in one run on one device.
//! `approxifer bench pipeline`: see [`pipeline`].
//!
//! Every figure counts bytes read plus bytes written, is the median over repeats, and is timed
//! with the device waited on: each repeat records enough launches to run for tens of
//! milliseconds, submits them and waits for the queue to drain.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::kernels::gpu::{AdapterChoice, DeviceTensor, Elem, GpuCode, GpuContext, GpuError, Kernels, wgpu};
use crate::kernels::{Code, CodeParams, cpu};

pub mod pipeline;

pub use pipeline::{PipelineBenchConfig, PipelineBenchReport, run_pipeline_bench};

/// What to measure.
#[derive(Clone, Debug)]
pub struct KernelBenchConfig {
    /// Size of the encode input (queries), in MiB.
    pub input_mib: usize,
    /// Queries per group.
    pub queries: usize,
    /// Workers per group.
    pub workers: usize,
    /// Row length of the encode benchmark.
    pub row_len: usize,
    /// Groups and classes of the decode benchmark (one straggler per group).
    pub decode_groups: usize,
    pub decode_classes: usize,
    /// Timed repeats per figure (the median is reported).
    pub repeats: usize,
    /// Also time Burn's matmul doing the encode.
    pub burn: bool,
}

impl Default for KernelBenchConfig {
    fn default() -> Self {
        KernelBenchConfig {
            input_mib: 50,
            queries: 8,
            workers: 10,
            row_len: 4096,
            decode_groups: 100_000,
            decode_classes: 10,
            repeats: 7,
            burn: true,
        }
    }
}

/// The figures, as `--json` prints them.
#[derive(Clone, Debug, Serialize)]
pub struct KernelBenchReport {
    pub adapter: String,
    pub k: usize,
    pub n: usize,
    pub input_mib: usize,
    /// `copy_buffer_to_buffer` of the encode input.
    pub copy_gbps: f64,
    /// The WGSL vec4 copy kernel on the same bytes.
    pub copy_kernel_gbps: f64,
    pub encode_gbps: f64,
    pub decode_gbps: f64,
    /// The CPU reference encode, all threads, same shapes.
    pub cpu_encode_gbps: f64,
    /// Burn's `matmul` doing the same encode on the same kind of device (None when skipped).
    pub burn_matmul_encode_gbps: Option<f64>,
    /// Decode of `decode_groups` groups of `decode_classes` outputs.
    pub decode_groups: usize,
    pub decode_classes: usize,
    pub decode_ms: f64,
    /// Encode of those groups' inputs as 784-float images (MNIST-sized), at the measured
    /// encode rate: what decode should take well under.
    pub encode_inputs_ms: f64,
    pub encode_vs_copy_kernel: f64,
    pub encode_vs_burn_matmul: Option<f64>,
}

/// Median wall time of `run` over `repeats`, after one warm-up run.
fn median_time(repeats: usize, mut run: impl FnMut() -> Result<(), GpuError>) -> Result<Duration, GpuError> {
    run()?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        run()?;
        times.push(start.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// Seconds per launch of `record` (which records one launch), recording as many launches per
/// submission as fill about 50 ms, so that submission overhead does not count.
fn time_launches(
    ctx: &GpuContext,
    repeats: usize,
    mut record: impl FnMut(&mut wgpu::CommandEncoder) -> Result<(), GpuError>,
) -> Result<f64, GpuError> {
    let mut run = |launches: usize| -> Result<(), GpuError> {
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        for _ in 0..launches {
            record(&mut encoder)?;
        }
        ctx.queue.submit([encoder.finish()]);
        ctx.wait()
    };
    let single = median_time(1, || run(1))?.as_secs_f64();
    let launches = ((0.05 / single.max(1e-9)).ceil() as usize).clamp(1, 1000);
    Ok(median_time(repeats, || run(launches))?.as_secs_f64() / launches as f64)
}

fn gbps(bytes: usize, seconds: f64) -> f64 {
    bytes as f64 / seconds / 1e9
}

fn buffer(ctx: &GpuContext, bytes: usize, label: &str) -> wgpu::Buffer {
    let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    // Touch it once so no lazy allocation lands inside a timed region.
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    encoder.clear_buffer(&buffer, 0, None);
    ctx.queue.submit([encoder.finish()]);
    buffer
}

/// Runs every measurement on the adapter `choice` selects.
pub fn run_kernel_bench(choice: &AdapterChoice, config: &KernelBenchConfig) -> anyhow::Result<KernelBenchReport> {
    let ctx = GpuContext::new(choice)?;
    let kernels = Kernels::new();
    let (k, n, d) = (config.queries, config.workers, config.row_len);
    let code = Code::new(CodeParams::builder(k, n).stragglers(1).build()?)?;
    let gpu_code = GpuCode::new(&ctx, &code)?;
    let groups = (config.input_mib << 20).div_ceil(4 * k * d).max(1);
    let (in_len, out_len) = (groups * k * d, groups * n * d);
    let (in_bytes, out_bytes) = (4 * in_len, 4 * out_len);
    let queries = buffer(&ctx, in_bytes, "queries");
    let coded = buffer(&ctx, out_bytes, "coded");
    let copy = buffer(&ctx, in_bytes, "copy");

    let copy_s = time_launches(&ctx, config.repeats, |e| {
        e.copy_buffer_to_buffer(&queries, 0, &copy, 0, in_bytes as u64);
        Ok(())
    })?;
    let copy_kernel_s = time_launches(&ctx, config.repeats, |e| {
        kernels.record_copy(
            &ctx,
            e,
            DeviceTensor::new(&queries, Elem::F32, in_len),
            DeviceTensor::new(&copy, Elem::F32, in_len),
            d,
        )
    })?;
    let encode_s = time_launches(&ctx, config.repeats, |e| {
        let (q, c) = (DeviceTensor::new(&queries, Elem::F32, in_len), DeviceTensor::new(&coded, Elem::F32, out_len));
        kernels.record_encode(&ctx, e, &gpu_code, q, c, d)
    })?;
    drop((coded, copy));

    // Decode: one straggler per group, rotating.
    let (dg, dc) = (config.decode_groups, config.decode_classes);
    let outputs = buffer(&ctx, 4 * dg * n * dc, "worker outputs");
    let decoded = buffer(&ctx, 4 * dg * k * dc, "decoded");
    let masks: Vec<u32> = (0..dg * n).map(|i| u32::from(i % n != (i / n) % n)).collect();
    let masks = {
        use wgpu::util::DeviceExt;
        ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("masks"),
            contents: bytemuck::cast_slice(&masks),
            usage: wgpu::BufferUsages::STORAGE,
        })
    };
    let decode_s = time_launches(&ctx, config.repeats, |e| {
        let (o, dd) =
            (DeviceTensor::new(&outputs, Elem::F32, dg * n * dc), DeviceTensor::new(&decoded, Elem::F32, dg * k * dc));
        kernels.record_decode(&ctx, e, &gpu_code, o, &masks, dd, dc)
    })?;
    let decode_bytes = 4 * dg * ((n - 1) * dc + n + k * dc);

    // The CPU reference on the same shapes, all threads.
    let host_queries: Vec<f32> = (0..in_len).map(|i| (i % 97) as f32 * 0.01).collect();
    let mut host_coded = vec![0.0f32; out_len];
    let cpu_s = median_time(config.repeats.min(5), || {
        cpu::encode(&code, &host_queries, d, &mut host_coded).map_err(GpuError::from)
    })?
    .as_secs_f64();
    drop((host_queries, host_coded));

    let burn_s = if config.burn { Some(burn_matmul_encode(choice, &code, groups, d, config.repeats)?) } else { None };

    let encode_gbps = gbps(in_bytes + out_bytes, encode_s);
    let copy_kernel_gbps = gbps(2 * in_bytes, copy_kernel_s);
    let burn_gbps = burn_s.map(|s| gbps(in_bytes + out_bytes, s));
    Ok(KernelBenchReport {
        adapter: ctx.adapter_name().to_string(),
        k,
        n,
        input_mib: in_bytes >> 20,
        copy_gbps: gbps(2 * in_bytes, copy_s),
        copy_kernel_gbps,
        encode_gbps,
        decode_gbps: gbps(decode_bytes, decode_s),
        cpu_encode_gbps: gbps(in_bytes + out_bytes, cpu_s),
        burn_matmul_encode_gbps: burn_gbps,
        decode_groups: dg,
        decode_classes: dc,
        decode_ms: decode_s * 1e3,
        encode_inputs_ms: (4 * dg * (k + n) * 784) as f64 / (encode_gbps * 1e9) * 1e3,
        encode_vs_copy_kernel: encode_gbps / copy_kernel_gbps,
        encode_vs_burn_matmul: burn_gbps.map(|b| encode_gbps / b),
    })
}

/// Seconds for Burn to encode `[groups, K, D]` queries as a user would without this crate:
/// the encode matrix, broadcast over the batch, times the queries.
fn burn_matmul_encode(
    choice: &AdapterChoice,
    code: &Code,
    groups: usize,
    d: usize,
    repeats: usize,
) -> anyhow::Result<f64> {
    use burn::tensor::{Device, Distribution, Tensor, TensorData};
    let device = crate::backend::BurnDevice::select(choice)?.device;
    let (k, n) = (code.params().queries(), code.params().workers());
    let weights: Vec<f32> = code.encode_matrix().as_slice().iter().map(|&w| w as f32).collect();
    let encode =
        Tensor::<2>::from_data(TensorData::new(weights, [n, k]), &device).unsqueeze::<3>().expand([groups, n, k]);
    let queries = Tensor::<3>::random([groups, k, d], Distribution::Default, &device);
    let sync = |device: &Device| device.sync().map_err(|e| GpuError::Device(format!("{e:?}")));
    let time = median_time(repeats, || {
        let coded = encode.clone().matmul(queries.clone());
        sync(&device)?;
        drop(coded);
        Ok(())
    })?;
    Ok(time.as_secs_f64())
}
